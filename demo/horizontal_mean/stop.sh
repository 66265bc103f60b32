#!/usr/bin/env bash
# Stops the processes demo/horizontal_mean/run.sh started, by the pids in its pid files (never by name).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="${XFED_HOME:-$(cd "$HERE/../.." && pwd)}"
# shellcheck source=../lib.sh
. "$ROOT/demo/lib.sh"
stop_demo
exit 0
