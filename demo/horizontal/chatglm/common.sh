# Shared by the horizontal_chatglm demos' run.sh / stop.sh (sourced, not run): demo/lib.sh plus the tiny
# model and demo data every config points at.
ROOT="$(cd "$HERE/../../../.." && pwd)"
# shellcheck source=../../lib.sh
. "$ROOT/demo/lib.sh"

ensure_assets() {  # built once, then reused
    [ -f "$ROOT/work/tiny-glm/config.json" ] || python "$ROOT/scripts/make_tiny_model.py" --out "$ROOT/work/tiny-glm"
    [ -f "$ROOT/work/demo_data/heldout.json" ] || python "$ROOT/scripts/make_demo_data.py" --out "$ROOT/work/demo_data"
}

run_demo() {  # run_demo NODE... -- CLIENT_ARGS... : start the daemons, run one job, follow it
    prepare_work
    ensure_assets
    local rc=0
    run_job 120 "$@" || rc=$?
    echo "adapters and metrics.json: $WORK/output/<job>/<node>/ (final/, checkpoint-<round>/); $HERE/stop.sh stops the daemons"
    return $rc
}
