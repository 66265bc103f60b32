#!/usr/bin/env bash
# Demo 3party_lora: three label trainers (non-IID: each mostly one skill) and an assist trainer that only aggregates; LoRA, OTP-masked.
# Starts the scheduler and the daemons in the background (pid files + logs under work/), builds the tiny
# model and demo data if missing, runs one job and follows it. The daemons keep running; ./stop.sh stops
# exactly what this script started. Extra arguments go to the client, e.g. ./run.sh --bar
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../common.sh
. "$HERE/../common.sh"
run_demo assist_trainer node-1 node-2 node-3 -- "$@"
