"""Jobs a Redis failover rolled back: active again in Redis although the scheduler saw them end.

Redis replicates asynchronously, so a failover can discard acknowledged writes. In a Sentinel
split brain (the old master frozen past down-after, then back with its clients' connections still
open) a whole job can run to its end on the old master; when Sentinel demotes it, the resync
throws all of that away and the new master still says RUNNING at round 2 while no process runs
it any more. Nothing else would end it: the nodes are alive (so no heartbeat verdict), the
scheduler had forgotten it (so no event is awaited).

Every few seconds the scheduler reads the newest jobs; an active one it does not track is taken
up again. If the scheduler saw it end (it remembers the last outcomes), that outcome is written
again with a note: its stages did complete (a SUCCESSFUL was judged on the nodes' `done` evidence)
and their outputs are on the nodes' disks. Otherwise (a scheduler restarted since) the job is
watched like every running job: with no event from any node for 2 x progress_timeout + the
failover window (a lost `done` event, a rolled-back record nobody runs), it is FAILED with a
reason, resumable. A training node reports progress at least once per step, and progress_timeout
must already exceed a step and a model load, so a live job is never that silent.

A failover can also lose a job's record altogether (the new master never received it: its
replication link was down, or the job was created on the old master after the replica last
caught up). A job the scheduler saw end within that same silence bound and that has no record
any more is written back from the scheduler's last snapshot, with a note, so `status` tells what
happened instead of "no such job". Later than that, a missing record is taken as expired or
removed on purpose and left alone.
"""
from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from xfed.broker.jobstore import Job, JobState

log = logging.getLogger("xfed.scheduler")

REMEMBERED = 100  # outcomes kept for re-recording


@dataclass(frozen=True)
class Ended:
    """What the scheduler saw of a job's end: enough to record it again."""

    state: JobState
    reason: str
    node: str
    snapshot: Job | None  # the record as it was just after the end (None: not readable then)
    at: float             # time.monotonic() of the end


class RollbackWatch:
    """The scheduler's watch for rolled-back and silent jobs (`check` is called from its loop)."""

    def __init__(self, sched: Any) -> None:
        self.s = sched
        fed = sched.fed
        self.silence_s = (2 * float(getattr(fed, "progress_timeout", 300.0) or 300.0)
                          + float(getattr(fed, "failover_window_s", 0.0) or 0.0))
        self.every_s = max(2.0, 2 * sched.interval)
        self.ended: collections.OrderedDict[str, Ended] = collections.OrderedDict()
        self.heard_at: dict[str, float] = {}
        self._next = 0.0

    def heard(self, job_id: str) -> None:
        self.heard_at[job_id] = time.monotonic()

    def ended_as(self, job_id: str, state: JobState, reason: str, node: str, snapshot: Job | None = None) -> None:
        self.ended[job_id] = Ended(state, reason, node, snapshot, time.monotonic())
        self.ended.move_to_end(job_id)
        while len(self.ended) > REMEMBERED:
            self.ended.popitem(last=False)
        self.heard_at.pop(job_id, None)

    def check(self, now: float) -> None:
        if now < self._next:
            return
        self._next = now + self.every_s
        s = self.s
        if now < s._liveness_grace_until:  # Redis was just away: silence means nothing yet
            for job_id in self.heard_at:
                self.heard_at[job_id] = now
            return
        for job_id in s.jobs.job_ids(limit=20):  # the newest: a rolled-back job is a recent one
            if job_id in s.cursors and job_id not in s.lingering:
                continue  # tracked as running
            state = s.jobs.state(job_id)
            if state is not None and not state.terminal:
                job = s.jobs.get(job_id)
                if job is not None and job.active:
                    self._take_up(job, now)
        for job_id, seen in list(self.ended.items()):
            if seen.snapshot is not None and now - seen.at <= self.silence_s and s.jobs.state(job_id) is None:
                self._restore(job_id, seen)
        for job_id in [j for j in s.cursors if j not in s.lingering]:
            last = self.heard_at.setdefault(job_id, now)
            if now - last > self.silence_s:
                state = s.jobs.state(job_id)
                if state is not None and state.terminal:
                    continue
                s._finish(job_id, JobState.FAILED, f"no event from any node for {now - last:.0f} s "
                          "(2 x progress_timeout + redis.failover_window): no node runs it any more (a Redis "
                          f"failover may have rolled its record back); resume with -c start --resume {job_id}", "")

    def _take_up(self, job: Any, now: float) -> None:
        s = self.s
        s.lingering.pop(job.job_id, None)
        s.cursors[job.job_id] = job.extra.get("cursor") or "0-0"
        self.heard_at[job.job_id] = now
        seen = self.ended.get(job.job_id)
        if seen is None:
            log.warning("job %s is %s in Redis but was not tracked (a Redis failover rolled it back?): watching it",
                        job.job_id, job.state.value)
            return
        state, reason, node = seen.state, seen.reason, seen.node
        note = (f"{state.value} recorded again: a Redis failover had rolled the job back to {job.state.value} "
                f"(stage {job.stage}) after the scheduler saw it end")
        log.warning("job %s: %s", job.job_id, note)
        s._finish(job.job_id, state, f"{reason}; {note}" if reason else note, node)

    def _restore(self, job_id: str, seen: Ended) -> None:
        note = (f"{seen.state.value} recorded again: a Redis failover lost the job's record after the "
                "scheduler saw it end")
        if seen.snapshot is None:
            return
        job = replace(seen.snapshot, state=seen.state, reason=f"{seen.reason}; {note}" if seen.reason else note)
        if self.s.jobs.restore(job):
            log.warning("job %s: %s", job_id, note)
            self.s._job_event(job_id, seen.state, job.stage, reason=job.reason, node=seen.node)
            self.s.jobs.expire(job_id)  # the events stream too, as after any end
