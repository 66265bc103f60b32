#!/usr/bin/env bash
# The README's test command: set up (idempotent), then run the whole suite (unit + integration).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
. ./env.sh
# Two workers, one test file each at a time (module fixtures such as a federation stay in one process);
# XFED_TEST_WORKERS=0 runs in one process. The slowest files start first (tests/conftest.py).
exec python -m pytest -q -p no:cacheprovider -n "${XFED_TEST_WORKERS:-2}" --dist loadfile "$@"
