#!/usr/bin/env bash
# Stops the processes ./run.sh started, by the pids in its pid files (never by name).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../common.sh
. "$HERE/../common.sh"
stop_demo
