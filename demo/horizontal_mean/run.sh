#!/usr/bin/env bash
# Demo of the built-in horizontal_mean operator (no LLM): starts the scheduler, the assist trainer and
# three trainers in the background (pid files + logs under work/), then runs one job and follows it.
# The daemons keep running afterwards (start more jobs with `python xfed.py -c start --config_path
# demo/horizontal_mean/config`); ./stop.sh stops exactly the processes this script started.
# Extra arguments go to the client, e.g. ./run.sh --bar
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="${XFED_HOME:-$(cd "$HERE/../.." && pwd)}"  # the repo (XFED_HOME when this folder was copied elsewhere)
CONFIG="$HERE/config"
WORK="${XFED_DEMO_WORK:-$HERE/work}"
# shellcheck disable=SC1091
. "$ROOT/env.sh"
export XFED_WORK_DIR="$WORK/stages" OMP_NUM_THREADS=1
mkdir -p "$WORK/logs" "$WORK/pids"

for f in "$WORK"/pids/*.pid; do
    if [ -e "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
        echo "already running (see $f); run $HERE/stop.sh first" >&2
        exit 1
    fi
done

launch() {  # launch NAME ARGS... : one daemon in the background, its pid in work/pids/NAME.pid
    local name=$1
    shift
    nohup python "$ROOT/xfed.py" "$@" --config_path "$CONFIG" >"$WORK/logs/$name.log" 2>&1 &
    echo $! >"$WORK/pids/$name.pid"
    echo "started $name (pid $!, log $WORK/logs/$name.log)"
}

launch scheduler -s
launch assist_trainer -a
for node in node-1 node-2 node-3; do
    launch "$node" -t "$node"
done

set +e
python "$ROOT/xfed.py" -c start --follow --wait-nodes 60 --config_path "$CONFIG" "$@"
rc=$?
set -e
python "$ROOT/xfed.py" -c status --config_path "$CONFIG" || true
echo "results: $WORK/output/<job>/<node>/horizontal_mean.json; daemons still running: $HERE/stop.sh stops them"
exit $rc
