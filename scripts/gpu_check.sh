#!/usr/bin/env bash
# CUDA paths on full-size random ChatGLM-6B / ChatGLM3-6B (bf16 & fp16 LoRA, bnb nf4 QLoRA, THUDM int4
# LoRA and P-tuning v2, peak GPU memory each; THUDM int4 fixtures on CUDA). <= 5 min on one H100.
# Without CUDA: a dry run that prints one "no CUDA" line and exits 0. --smoke: the same steps on CPU,
# 2 layers (checks the script). Details: scripts/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
exec timeout 300 env PYTHONPATH="$PWD" "$PY" scripts/gpu_check.py "$@"
