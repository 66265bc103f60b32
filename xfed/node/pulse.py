"""Liveness of the work, not just of the process: a stage process's pulse and its daemon's stall check.

The stage process (`Pulse`) rewrites a small file in its work dir whenever its main thread shows
that it moves: each `should_stop()` poll (operators call it per step and while waiting for a peer,
Comm calls it while it waits) and each progress report (which also records the step/round). The
daemon (`StallWatch`) notices when the file changes, on its own clock. A stage whose pulse has not
changed for `max(timeout_s, FACTOR x the slowest gap seen so far)` is frozen (SIGSTOP), deadlocked
or stuck outside any wait, and the daemon kills it and fails the job naming the node and the last
progress. Only the main thread pulses: a helper thread that still runs must not hide a stuck stage.
A phase that calls neither (loading a very large model from a slow disk) must fit in `timeout_s`.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

FILE_NAME = "pulse.json"
FACTOR = 3            # a gap this many times the slowest one seen is a stall, whatever timeout_s says
MIN_WRITE_S = 0.5     # a tight should_stop() loop rewrites the file at most this often
PROGRESS_KEYS = ("round", "rounds", "step", "steps")


class Pulse:
    """Written by the stage process; `beat()` is cheap enough for a tight loop."""

    def __init__(self, work_dir: str | os.PathLike) -> None:
        self.path = Path(work_dir) / FILE_NAME
        self.seq = 0
        self.progress: dict[str, Any] = {}
        self._written = 0.0

    def beat(self, progress: dict[str, Any] | None = None) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if progress:
            self.progress = {k: progress[k] for k in PROGRESS_KEYS if isinstance(progress.get(k), (int, float))}
        now = time.monotonic()
        if not progress and now - self._written < MIN_WRITE_S:
            return
        self._written = now
        self.seq += 1
        tmp = self.path.with_name(FILE_NAME + ".tmp")
        try:
            tmp.write_text(json.dumps({"seq": self.seq, "progress": self.progress}))
            os.replace(tmp, self.path)
        except OSError:
            pass  # a full disk fails the stage elsewhere, with its own message


def describe_progress(progress: dict[str, Any]) -> str:
    if "round" in progress:
        text = f"round {progress['round']}" + (f"/{progress['rounds']}" if "rounds" in progress else "")
        if "step" in progress:
            text += f", step {progress['step']}" + (f"/{progress['steps']}" if "steps" in progress else "")
        return text
    if "step" in progress:
        return f"step {progress['step']}" + (f"/{progress['steps']}" if "steps" in progress else "")
    return ""


def process_stopped(pid: int | None) -> bool:
    """Whether `pid` is stopped by a signal (state T in /proc: SIGSTOP, SIGTSTP, a debugger)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[-1][:1] in ("T", "t")
    except OSError:
        return False


class StallWatch:
    """The daemon's view of one stage process's pulse (its own monotonic clock)."""

    def __init__(self, work_dir: str | os.PathLike, timeout_s: float, *, now: float | None = None) -> None:
        self.path = Path(work_dir) / FILE_NAME
        self.timeout_s = float(timeout_s)
        self.last_change = time.monotonic() if now is None else now
        self.slowest = 0.0          # longest gap between two pulses (the first, start-up, excluded)
        self.progress: dict[str, Any] = {}
        self._mtime: int | None = None
        self._seq: int | None = None

    def limit(self) -> float:
        return max(self.timeout_s, FACTOR * self.slowest)

    def check(self, now: float | None = None) -> float | None:
        """Seconds without a pulse when that exceeds the limit (a stall), else None."""
        now = time.monotonic() if now is None else now
        self._read(now)
        quiet = now - self.last_change
        return quiet if quiet > self.limit() else None

    def _read(self, now: float) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            return
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            data = json.loads(self.path.read_text())
            seq, progress = int(data["seq"]), data.get("progress") or {}
        except (OSError, ValueError, KeyError, TypeError):
            return
        if seq == self._seq:
            return
        if self._seq is not None:
            self.slowest = max(self.slowest, now - self.last_change)
        self._seq, self.last_change = seq, now
        if isinstance(progress, dict):
            self.progress = progress

    def describe(self, quiet_s: float, pid: int | None) -> str:
        last = describe_progress(self.progress)
        frozen = "; the process is stopped (SIGSTOP?)" if process_stopped(pid) else ""
        return (f"made no progress for {quiet_s:.0f} s (limit {self.limit():g} s: fed_conf.json progress_timeout, "
                f"at least {FACTOR}x the slowest step seen){frozen}; last progress: "
                f"{last or 'none reported yet'}; killed")
