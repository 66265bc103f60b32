#!/usr/bin/env bash
# Demo 2party_lora: two label trainers and an aggregating assist trainer; LoRA, OTP-masked (two masked parties).
# Starts the scheduler and the daemons in the background (pid files + logs under work/), builds the tiny
# model and demo data if missing, runs one job and follows it. The daemons keep running; ./stop.sh stops
# exactly what this script started. Extra arguments go to the client, e.g. ./run.sh --bar
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../common.sh
. "$HERE/../common.sh"
run_demo assist_trainer node-1 node-2 -- "$@"
