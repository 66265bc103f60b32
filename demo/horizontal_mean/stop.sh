#!/usr/bin/env bash
# Stops the processes demo/horizontal_mean/run.sh started, by the pids in its pid files (never by name).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="${XFED_DEMO_WORK:-$HERE/work}"
pids=()
for f in "$WORK"/pids/*.pid; do
    [ -e "$f" ] || continue
    pid="$(cat "$f")"
    # only a process that is still the one we started (pid reuse): its command line names xfed.py
    if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "xfed.py"; then
        kill -TERM "$pid" && pids+=("$pid") && echo "stopping $(basename "$f" .pid) (pid $pid)"
    fi
    rm -f "$f"
done
for _ in $(seq 100); do  # up to 10 s for a clean exit, then SIGKILL
    alive=()
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
    [ ${#alive[@]} -eq 0 ] && exit 0
    sleep 0.1
done
for pid in "${alive[@]}"; do kill -KILL "$pid" 2>/dev/null && echo "killed pid $pid"; done
exit 0
