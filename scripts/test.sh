#!/usr/bin/env bash
# The README's test command: set up (idempotent), then run the whole suite (unit + integration).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
. ./env.sh
exec python -m pytest -q -p no:cacheprovider "$@"
