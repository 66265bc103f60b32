#!/usr/bin/env bash
# Demo 3party_ptuningv2: three label trainers and an assist trainer that trains on its own data too; P-tuning v2
# (PREFIX_TUNING, 128 virtual tokens, lr 0.1), OTP-masked, on the demo task over the letters a-h.
# Starts the scheduler and the daemons in the background (pid files + logs under work/), builds the tiny
# model and demo data if missing, runs one job and follows it. The daemons keep running; ./stop.sh stops
# exactly what this script started. Extra arguments go to the client, e.g. ./run.sh --bar
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../common.sh
. "$HERE/../common.sh"
# P-tuning v2 trains on the demo task over the letters a-h, built once: a prefix stores a letter map
# entry by entry, and 26-letter maps are beyond what the tiny model's prefix learns in minutes
# (docs/DEMO_TASK.md, docs/QUALITY.md)
[ -f "$ROOT/work/demo_data_a-h/heldout.json" ] || python "$ROOT/scripts/make_demo_data.py" --letters abcdefgh --out "$ROOT/work/demo_data_a-h" >/dev/null
run_demo assist_trainer node-1 node-2 node-3 -- "$@"
