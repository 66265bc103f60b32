#!/usr/bin/env bash
# Demo of the built-in horizontal_mean operator (no LLM): starts the scheduler, the assist trainer and
# three trainers in the background (pid files + logs under work/), then runs one job and follows it.
# The daemons keep running afterwards (start more jobs with `python xfed.py -c start --config_path
# demo/horizontal_mean/config`); ./stop.sh stops exactly the processes this script started.
# Extra arguments go to the client, e.g. ./run.sh --bar
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="${XFED_HOME:-$(cd "$HERE/../.." && pwd)}"  # the repo (XFED_HOME when this folder was copied elsewhere)
# shellcheck source=../lib.sh
. "$ROOT/demo/lib.sh"
prepare_work
rc=0
run_job 60 assist_trainer node-1 node-2 node-3 -- "$@" || rc=$?
echo "results: $WORK/output/<job>/<node>/horizontal_mean.json; daemons still running: $HERE/stop.sh stops them"
exit $rc
