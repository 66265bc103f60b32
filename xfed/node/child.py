"""The stage child process as the daemon sees it: start, watch, stop (TERM then KILL), explain its exit."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from xfed.node.exit_codes import EXIT_DONE, EXIT_ERROR_REPORTED, EXIT_ORPHANED, EXIT_STOPPED


def describe_exit(rc: int) -> str:
    """Human words for a Popen return code (negative = killed by that signal)."""
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if -rc == signal.SIGKILL else ""
        return f"killed by {name} (signal {-rc}){hint}"
    return {EXIT_DONE: "exited normally", EXIT_ERROR_REPORTED: "failed (error reported)",
            EXIT_STOPPED: "stopped on request", EXIT_ORPHANED: "exited because its daemon died"}.get(
        rc, f"exited with code {rc}")


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class SpareChild:
    """A warm `stage_runner --spare`: imports done while idle, waiting for its stage on stdin."""

    def __init__(self, *, log_path: Path, preload: list[str]) -> None:
        self.log_path, self.preload = Path(log_path), preload
        self.proc: subprocess.Popen | None = None

    def start(self) -> SpareChild:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "xfed.node.stage_runner", "--spare", "--preload", ",".join(self.preload),
               "--parent-pid", str(os.getpid())]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                         env=_child_env(), start_new_session=True, close_fds=True)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def hand_over(self, stage_args: dict) -> subprocess.Popen | None:
        """Give the spare its stage; None if it died meanwhile (the caller starts a fresh child)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return None
        try:
            proc.stdin.write((json.dumps(stage_args) + "\n").encode())
            proc.stdin.close()
        except OSError:
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None
        return proc

    def discard(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        _killpg(proc.pid, signal.SIGKILL)
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


class StageChild:
    """One `python -m xfed.node.stage_runner` process in its own process group."""

    def __init__(self, *, job_id: str, stage_id: int, attempt: int, node_id: str, config_path: str,
                 work_dir: Path, grace_s: float = 5.0, entry_id: str | None = None, incarnation: int = 0) -> None:
        self.job_id, self.stage_id, self.attempt, self.node_id = job_id, stage_id, attempt, node_id
        self.incarnation = int(incarnation)  # > 0: restarted into a running stage (a rejoin)
        self.config_path, self.work_dir, self.grace_s = config_path, Path(work_dir), grace_s
        self.entry_id = entry_id           # the command-stream entry to ack once the stage is over
        self.log_path = self.work_dir / "stage.log"
        self.proc: subprocess.Popen | None = None
        self.stop_reason = ""
        self.stall_reason = ""             # set by the daemon when the stage stopped making progress
        self.watch = None                  # its xfed.node.pulse.StallWatch
        self._kill_at: float | None = None
        self.started = 0.0
        self.last_job_check = 0.0          # when the daemon last read this job's state (monotonic)

    def start(self, spare: SpareChild | None = None) -> None:
        """Run the stage in `spare` if one is ready, else in a freshly started process."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        if spare is not None:
            self.proc = spare.hand_over({"config_path": str(self.config_path), "node": self.node_id,
                                         "job": str(self.job_id), "stage": self.stage_id, "attempt": self.attempt,
                                         "work_dir": str(self.work_dir), "incarnation": self.incarnation})
            if self.proc is not None:
                return
        cmd = [sys.executable, "-m", "xfed.node.stage_runner", "--config-path", str(self.config_path),
               "--node", self.node_id, "--job", str(self.job_id), "--stage", str(self.stage_id),
               "--attempt", str(self.attempt), "--parent-pid", str(os.getpid()), "--work-dir", str(self.work_dir),
               "--incarnation", str(self.incarnation)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=_child_env(), start_new_session=True, close_fds=True)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def poll(self) -> int | None:
        """Return code once exited (and the group reaped), else None; escalates a pending stop."""
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            if self._kill_at is not None and time.monotonic() >= self._kill_at:
                self._signal_group(signal.SIGKILL)
                self._kill_at = None
            return None
        self._signal_group(signal.SIGKILL)  # grandchildren (data loaders, ...) go with it
        return rc

    def stop(self, reason: str) -> None:
        """SIGTERM the group now, SIGKILL after `grace_s` (driven by `poll`)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if not self.stop_reason:
            self.stop_reason = reason
            self._signal_group(signal.SIGTERM)
            self._kill_at = time.monotonic() + self.grace_s

    def kill_group(self) -> None:
        """SIGKILL the group now without waiting (a stopped or deadlocked stage ignores SIGTERM)."""
        self._signal_group(signal.SIGKILL)

    def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL the group and wait (daemon shutdown)."""
        if self.proc is None:
            return
        self.stop_reason = self.stop_reason or "daemon shutting down"
        self._signal_group(signal.SIGKILL)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass

    def _signal_group(self, sig: int) -> None:
        if self.proc is not None:
            _killpg(self.proc.pid, sig)

    def log_tail(self, n_chars: int = 300) -> str:
        """The last non-empty line of the child's log (for an error message)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4096))
                lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return lines[-1][:n_chars] if lines else ""
