# Source me: `source env.sh` — puts xfed on PYTHONPATH, activates .venv, keeps Hugging Face offline.
XFED_HOME="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)"
export XFED_HOME
export PYTHONPATH="$XFED_HOME${PYTHONPATH:+:$PYTHONPATH}"
export XFED_CONFIG_PATH="${XFED_CONFIG_PATH:-$XFED_HOME/config}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# `if`, not `&&`: without a venv, sourcing must still succeed (scripts under `set -e` source this file)
if [ -f "$XFED_HOME/.venv/bin/activate" ]; then . "$XFED_HOME/.venv/bin/activate"; fi
