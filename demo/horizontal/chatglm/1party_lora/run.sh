#!/usr/bin/env bash
# Demo 1party_lora: one label trainer alone (no assist trainer, no aggregation): local LoRA with the same checkpoints and metrics.
# Starts the scheduler and the daemons in the background (pid files + logs under work/), builds the tiny
# model and demo data if missing, runs one job and follows it. The daemons keep running; ./stop.sh stops
# exactly what this script started. Extra arguments go to the client, e.g. ./run.sh --bar
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../common.sh
. "$HERE/../common.sh"
run_demo node-1 -- "$@"
