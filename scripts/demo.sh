#!/usr/bin/env bash
# The README's demo, end to end on CPU: set-up, the tiny model and demo data (built once), then the
# 3party_lora job (scheduler, assist trainer and three label trainers as separate processes over one
# Redis, OTP-masked LoRA updates), per-round metrics, held-out exact match of the base model vs the
# federated adapter, and one inference example. Stops every process it started, also on error or ^C.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
t0=$(date +%s)
phase() { local now; now=$(date +%s); timings+=("$1 $((now - t_phase)) s"); t_phase=$now; }
timings=()
t_phase=$t0
bash scripts/setup.sh
phase set-up
# shellcheck disable=SC1091
. ./env.sh
export OMP_NUM_THREADS=1
# make_tiny_model.py is idempotent (a recipe stamp); it rebuilds only when the recipe changed
python scripts/make_tiny_model.py --out work/tiny-glm
python scripts/make_demo_data.py --out work/demo_data >/dev/null  # deterministic, a second
phase "tiny model + data"

DEMO=demo/horizontal/chatglm/3party_lora
WORK="$ROOT/$DEMO/work"
trap '"$ROOT/$DEMO/stop.sh" >/dev/null' EXIT
echo "== federated training: $DEMO (logs in $WORK/logs)"
XFED_DEMO_QUIET=1 "$DEMO/run.sh"
job=$(awk 'NR == 1 {print $1}' "$WORK/logs/client.log")
out="$WORK/output/$job"
"$DEMO/stop.sh" >/dev/null
phase "federated job"

echo
echo "== per-round metrics (each label trainer evaluates on its own validation set)"
python -m xfed.operators.horizontal_chatglm.report "$out" --plot "$WORK/loss.png"  # prints "plot: PATH"

echo
echo "== held-out set (all three skills): base model vs federated adapter"
python -m xfed.infer --model work/tiny-glm --adapter "$out/assist_trainer/final" \
    --eval work/demo_data/heldout.json --baseline --show 3 --max-new-tokens 12 | tee "$WORK/heldout.txt"

echo
echo "== inference: python -m xfed.infer --model work/tiny-glm --adapter $out/node-1/final --instruction text --prompt 'shift python'"
python -m xfed.infer --model work/tiny-glm --adapter "$out/node-1/final" --instruction text --prompt "shift python" \
    --max-new-tokens 12
phase "evaluation + inference"
echo
echo "demo finished in $(( $(date +%s) - t0 )) s ($(printf "%s; " "${timings[@]}" | sed "s/; $//")); adapters (PEFT format) under $out/<node>/final"
base=$(grep -oE 'base model: exact match [0-9.]+' "$WORK/heldout.txt" | awk '{print $NF}')
fed=$(grep -oE 'base \+ adapter: exact match [0-9.]+' "$WORK/heldout.txt" | awk '{print $NF}')
# the documented claim (docs/DEMO_TASK.md), with margin: held-out exact match >= 0.6 and above the base model
if python -c "import sys; b, f = float('$base'), float('$fed'); sys.exit(0 if f >= 0.6 and f > b else 1)"; then
    echo "federated adapter learned the three ciphers: held-out exact match $base -> $fed (>= 0.6)"
else
    echo "federated adapter did NOT learn the three ciphers: held-out exact match $base -> $fed (want >= 0.6)" >&2
    exit 1
fi
