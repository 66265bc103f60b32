# Shared by the horizontal_chatglm demos' run.sh / stop.sh (sourced, not run). Each demo folder holds
# config/ (XFL layout) and keeps its pid files, logs and outputs under work/ (XFED_DEMO_WORK overrides).
DEMO="$(cd "$HERE" && pwd)"
ROOT="$(cd "$DEMO/../../../.." && pwd)"
CONFIG="$DEMO/config"
WORK="${XFED_DEMO_WORK:-$DEMO/work}"

ensure_assets() {  # the tiny model and the demo data every config points at (built once, then reused)
    # shellcheck disable=SC1091
    . "$ROOT/env.sh"
    [ -f "$ROOT/work/tiny-glm/config.json" ] || python "$ROOT/scripts/make_tiny_model.py" --out "$ROOT/work/tiny-glm"
    [ -f "$ROOT/work/demo_data/heldout.json" ] || python "$ROOT/scripts/make_demo_data.py" --out "$ROOT/work/demo_data"
}

launch() {  # launch NAME ARGS... : one daemon in the background, its pid in work/pids/NAME.pid
    local name=$1
    shift
    nohup python "$ROOT/xfed.py" "$@" --config_path "$CONFIG" >"$WORK/logs/$name.log" 2>&1 &
    echo $! >"$WORK/pids/$name.pid"
    echo "started $name (pid $!, log $WORK/logs/$name.log)"
}

run_demo() {  # run_demo NODE... -- CLIENT_ARGS... : start the daemons, run one job, follow it
    local nodes=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do nodes+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    ensure_assets
    export XFED_WORK_DIR="$WORK/stages" OMP_NUM_THREADS=1
    mkdir -p "$WORK/logs" "$WORK/pids"
    for f in "$WORK"/pids/*.pid; do
        if [ -e "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
            echo "already running (see $f); run $DEMO/stop.sh first" >&2
            return 1
        fi
    done
    launch scheduler -s
    for node in "${nodes[@]}"; do
        if [ "$node" = assist_trainer ]; then launch "$node" -a; else launch "$node" -t "$node"; fi
    done
    local rc=0
    python "$ROOT/xfed.py" -c start --follow --wait-nodes 120 --config_path "$CONFIG" "$@" | tee "$WORK/logs/client.log" || rc=$?
    [ -n "${XFED_DEMO_QUIET:-}" ] || python "$ROOT/xfed.py" -c status --config_path "$CONFIG" || true
    echo "adapters and metrics.json: $WORK/output/<job>/<node>/ (final/, checkpoint-<round>/); $DEMO/stop.sh stops the daemons"
    return $rc
}

# shellcheck source=../../stop_pids.sh
. "$ROOT/demo/stop_pids.sh"
stop_demo() {  # stop exactly the processes run_demo started (pid files; never by name)
    stop_pids "$WORK"
}
