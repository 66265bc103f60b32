"""The scheduler's side of membership changes in a stage that tolerates dropouts (issue 16).

Mixed into xfed.scheduler.core.Scheduler: marking label trainers `dropped`, re-dispatching a
dropped one whose daemon is alive again (a rejoin, as a new incarnation), and recording when the
stage's root admitted it. The decisions are pure functions in xfed.scheduler.dropouts/rejoins.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from xfed.broker.jobrecord import Job, NodeStatus, rejoin_field
from xfed.broker.messages import NodeState
from xfed.broker.streams import ControlStream
from xfed.scheduler.rejoins import with_admission, with_rejoin

log = logging.getLogger("xfed.scheduler")


class MembershipMixin:
    jobs: Any
    r: Any
    keys: Any

    def _tolerate(self, job_id: str, job: Job, verdict: Any) -> None:
        for n in verdict.dropped:
            status = NodeStatus(state=NodeState.DROPPED, stage=job.stage, message=verdict.reason)
            job.nodes[n] = status
            self.jobs.set_node(job_id, n, status)
            log.warning("job %s: %s %s", job_id, n, verdict.reason)

    def _rejoin(self, job: Job, node: str) -> None:
        """A dropped label trainer's daemon is alive again: offer it the running stage as a new incarnation."""
        record, k = with_rejoin(job, node)
        field = rejoin_field(job.stage, job.attempt)
        job.extra[field] = record
        self.jobs.set_fields(job.job_id, **{field: record})  # before the command: the root reads it
        status = NodeStatus(state=NodeState.DISPATCHED, stage=job.stage,
                            message=f"restarted: rejoining stage {job.stage} (incarnation {k}); "
                                    f"admitted at the next round boundary")
        job.nodes[node] = status
        self.jobs.set_node(job.job_id, node, status)
        ControlStream(self.r, self.keys.node_cmd(node), maxlen=1000).add(
            {"type": "run_stage", "job": job.job_id, "stage": job.stage, "attempt": job.attempt,
             "participants": job.participants, "incarnation": k, "ts": time.time()})
        log.info("job %s: %s is alive again; re-dispatched stage %s to it (incarnation %s)", job.job_id, node,
                 job.stage, k)

    def _note_admission(self, job: Job, data: Any) -> None:
        """The root admitted rejoiners from a round on: from now on the stage waits for them."""
        got = with_admission(job, data)
        if got is None:
            return
        record, admitted, first = got
        field = rejoin_field(job.stage, job.attempt)
        job.extra[field] = record
        self.jobs.set_fields(job.job_id, **{field: record})
        for n, k in admitted.items():
            status = job.nodes.setdefault(n, NodeStatus())
            status.message = f"rejoined from round {first} (incarnation {k})"
            self.jobs.set_node(job.job_id, n, status)
