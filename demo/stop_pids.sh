# Sourced by the demos' stop scripts: `stop_pids DIR` stops the processes whose pid files are in DIR/pids,
# by pid (never by name), only while each is still the xfed.py process we started (pid reuse).
stop_pids() {
    local work="$1" pids=() alive=() f pid
    for f in "$work"/pids/*.pid; do
        [ -e "$f" ] || continue
        pid="$(cat "$f")"
        if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "xfed.py"; then
            kill -TERM "$pid" && pids+=("$pid") && echo "stopping $(basename "$f" .pid) (pid $pid)"
        fi
        rm -f "$f"
    done
    for _ in $(seq 100); do  # up to 10 s for a clean exit, then SIGKILL
        alive=()
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
        [ ${#alive[@]} -eq 0 ] && return 0
        sleep 0.1
    done
    for pid in "${alive[@]}"; do kill -KILL "$pid" 2>/dev/null && echo "killed pid $pid"; done
    return 0
}
