"""`-c start --follow`: a job's events as they come (or progress bars with --bar) until it ends.

A follower rides out what the daemons ride out: a scheduler restart (up to SCHEDULER_GONE_S) and a
Redis restart or failover (each command retries for the failover window; the loop up to
REDIS_GONE_S, then one line). A job whose scheduler and nodes are all gone is marked FAILED
(xfed.broker.orphans) instead of being followed forever.
"""
from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console

from xfed.broker.jobrecord import Job, JobState
from xfed.broker.jobstore import JobStore
from xfed.broker.keys import Keys
from xfed.broker.orphans import end_if_orphaned
from xfed.broker.requests import scheduler_alive
from xfed.broker.streams import ControlStream
from xfed.display import cell
from xfed.errors import BrokerError
from xfed.job_text import duration, progress_text, stage_text

SCHEDULER_GONE_S = 30.0
REDIS_GONE_S = 120.0  # a follower waits this long for an unreachable Redis (the daemons wait longer)


class Follower:
    """Prints a job's events as they come (or drives progress bars with --bar) until it ends."""

    def __init__(self, r: Any, keys: Keys, job_id: str, *, recheck_s: float, bar: bool = False,
                 since: str = "0-0") -> None:
        """recheck_s: how long an orphaned job's nodes get to show a heartbeat (fed heartbeat_interval)."""
        self.r, self.keys, self.jobs = r, keys, JobStore(r, keys)
        self.job_id, self.recheck_s, self.bar, self.since = job_id, recheck_s, bar, since
        self.stream = ControlStream(r, keys.job_events(job_id))
        self.progress = None
        self.tasks: dict[str, Any] = {}

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, highlight=False, markup=False)
        else:
            print(text, flush=True)

    def run(self) -> int:
        job = self.jobs.require(self.job_id)
        if self.bar:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description:<16}"), BarColumn(),
                                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                     console=Console(stderr=False, highlight=False))
            for n in job.participants:
                self.tasks[n] = self.progress.add_task(n, total=1.0, info="")
            self.progress.start()
        try:
            return self._loop()
        except KeyboardInterrupt:
            print(f"\nstopped following; job {self.job_id} goes on (-c status {self.job_id}, -c stop {self.job_id})",
                  file=sys.stderr)
            raise
        finally:
            if self.progress is not None:
                self.progress.stop()

    def _loop(self) -> int:
        last, next_check, gone_since = self.since, 0.0, None
        redis_gone: float | None = None
        while True:
            try:
                step = self._turn(last, next_check, gone_since)
            except BrokerError as err:
                # the daemons ride out a Redis restart; so does a follower (for as long as the scheduler
                # would be given before it counts as gone)
                now = time.monotonic()
                if redis_gone is None:
                    redis_gone = now
                    self.say(f"Redis unreachable ({err}); still following job {self.job_id}")
                elif now - redis_gone > REDIS_GONE_S:
                    raise BrokerError(f"Redis unreachable for {REDIS_GONE_S:g} s while following job "
                                      f"{self.job_id} (check again with -c status {self.job_id}): {err}") from None
                time.sleep(0.5)
                continue
            if redis_gone is not None:
                self.say(f"Redis reachable again after {time.monotonic() - redis_gone:.0f} s")
                redis_gone = None
            if isinstance(step, int):
                return step
            last, next_check, gone_since = step

    def _turn(self, last: str, next_check: float, gone_since: float | None):
        """One read of the job's events and (every 0.5 s) of its state: the exit code once it ended,
        else the loop's (last id, next check, scheduler gone since)."""
        for entry in self.stream.read(last, block_ms=300):
            last = entry.id
            if entry.msg is not None:
                self._show(entry.msg)
        now = time.monotonic()
        if now < next_check:
            return last, next_check, gone_since
        next_check = now + 0.5
        job = self.jobs.require(self.job_id)
        if job.state.terminal:
            for entry in self.stream.read(last, count=100_000):  # whatever arrived meanwhile
                if entry.msg is not None:
                    self._show(entry.msg)
            return self._final(job)
        if scheduler_alive(self.r, self.keys):
            gone_since = None
        elif gone_since is None:
            gone_since = now
        elif now - gone_since > SCHEDULER_GONE_S:
            job, note = end_if_orphaned(self.r, self.keys, self.jobs, job, recheck_s=self.recheck_s)
            if note:
                self.say(note)
            if job.state.terminal:
                return self._final(job)
            self.say(f"the scheduler has been gone for {SCHEDULER_GONE_S:g} s; job {self.job_id} is still "
                     f"{job.state.value} in Redis (check again with -c status {self.job_id})")
            return 1
        return last, next_check, gone_since

    def _final(self, job: Job) -> int:
        if job.state is JobState.SUCCESSFUL:
            self.say(f"job {job.job_id} SUCCESSFUL in {duration(job)}")
            return 0
        why = f": {job.reason}" if job.reason else ""
        self.say(f"job {job.job_id} {job.state.value}{why}")
        return 1

    def _show(self, m: dict[str, Any]) -> None:
        kind, node = m["type"], m.get("node", "")
        data = m.get("data") if isinstance(m.get("data"), dict) else {}
        if kind == "job":
            if m["state"] == "RUNNING":
                attempt = f" (attempt {m['attempt']})" if m.get("attempt") else ""
                self.say(f"job {m['job']} RUNNING stage {stage_text(m['stage'])}{attempt}")
        elif kind == "status":
            pid = f" (stage pid {m['pid']})" if isinstance(m.get("pid"), int) else ""
            self.say(f"{node}: {m['state']}{pid}")
        elif kind == "progress":
            frac = data.get("fraction")
            info = progress_text(data)
            if self.progress is not None and node in self.tasks:
                self.progress.update(self.tasks[node], completed=float(frac) if isinstance(frac, (int, float))
                                     else 0.0, info=info)
            elif info:
                self.say(f"{node}: {info}")
        elif kind == "metrics":
            fields = " ".join(f"{k}={cell(v)}" for k, v in data.items() if k != "round")
            self.say(f"{node} round {cell(data.get('round'))}: {fields}")
        elif kind in ("warning", "log"):
            self.say(f"{kind} {node}: {data.get('message', data)}")
        elif kind == "error":
            self.say(f"error {node}: {m['message']}")
        elif kind == "done":
            if self.progress is not None and node in self.tasks:
                self.progress.update(self.tasks[node], completed=1.0)
            self.say(f"{node}: stage {stage_text(m['stage'])} done")
