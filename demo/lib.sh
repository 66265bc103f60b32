# Sourced by the demos' run.sh / stop.sh (not run): prepare a demo's work folder, start the federation's
# daemons, run one job and follow it, stop exactly what was started. The caller sets HERE (the demo
# folder, holding config/ in XFL layout and stop.sh) and ROOT (the repo); pid files, logs and outputs go
# under WORK (HERE/work, or XFED_DEMO_WORK).
CONFIG="$HERE/config"
WORK="${XFED_DEMO_WORK:-$HERE/work}"

prepare_work() {  # the environment, the work folders; fails when this demo's daemons are still running
    # shellcheck disable=SC1091
    . "$ROOT/env.sh"
    export XFED_WORK_DIR="$WORK/stages" OMP_NUM_THREADS=1
    mkdir -p "$WORK/logs" "$WORK/pids"
    local f
    for f in "$WORK"/pids/*.pid; do
        if [ -e "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
            echo "already running (see $f); run $HERE/stop.sh first" >&2
            return 1
        fi
    done
}

launch() {  # launch NAME ARGS... : one daemon in the background, its pid in WORK/pids/NAME.pid
    local name=$1
    shift
    nohup python "$ROOT/xfed.py" "$@" --config_path "$CONFIG" >"$WORK/logs/$name.log" 2>&1 &
    echo $! >"$WORK/pids/$name.pid"
    echo "started $name (pid $!, log $WORK/logs/$name.log)"
}

run_job() {  # run_job WAIT_S NODE... -- CLIENT_ARGS... : start the daemons, run one job, follow it (its exit code)
    local wait_s=$1 nodes=() node rc=0
    shift
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do nodes+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    launch scheduler -s
    for node in "${nodes[@]}"; do
        if [ "$node" = assist_trainer ]; then launch "$node" -a; else launch "$node" -t "$node"; fi
    done
    python "$ROOT/xfed.py" -c start --follow --wait-nodes "$wait_s" --config_path "$CONFIG" "$@" \
        | tee "$WORK/logs/client.log" || rc=$?
    [ -n "${XFED_DEMO_QUIET:-}" ] || python "$ROOT/xfed.py" -c status --config_path "$CONFIG" || true
    return $rc
}

stop_demo() {  # stop the processes whose pid files are in WORK/pids, by pid (never by name), only while
    # each is still the xfed.py process we started (pid reuse)
    local pids=() alive=() f pid
    for f in "$WORK"/pids/*.pid; do
        [ -e "$f" ] || continue
        pid="$(cat "$f")"
        if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "xfed.py"; then
            kill -TERM "$pid" && pids+=("$pid") && echo "stopping $(basename "$f" .pid) (pid $pid)"
        fi
        rm -f "$f"
    done
    for _ in $(seq 100); do  # up to 10 s for a clean exit, then SIGKILL
        alive=()
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
        [ ${#alive[@]} -eq 0 ] && return 0
        sleep 0.1
    done
    for pid in "${alive[@]}"; do kill -KILL "$pid" 2>/dev/null && echo "killed pid $pid"; done
    return 0
}
