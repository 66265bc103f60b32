#!/usr/bin/env bash
# Stops the processes demo/horizontal_mean/run.sh started, by the pids in its pid files (never by name).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="${XFED_DEMO_WORK:-$HERE/work}"
ROOT="${XFED_HOME:-$(cd "$HERE/../.." && pwd)}"
# shellcheck source=../stop_pids.sh
. "$ROOT/demo/stop_pids.sh"
stop_pids "$WORK"
exit 0
