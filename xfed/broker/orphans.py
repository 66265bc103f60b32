"""Ending a job nobody runs any more: PENDING/RUNNING, but its scheduler and every node are gone.

The scheduler fails a job whose nodes die; nothing fails one whose scheduler died too (every
process gave up after a failover longer than its window, or the machines went away). Such a record
would stay RUNNING forever and block the next start, so whoever looks at it (`-c status`, a
follower) ends it: FAILED with a reason, resumable with `-c start --resume J`.

"Gone" means no heartbeat lease, seen twice a heartbeat interval apart (a lease outlasts a failover
window, so a failover alone never looks like this), and a job record nobody wrote for a while (a
minute by default: a record just created by hand, or clocks a little apart, do not count). A client whose ACL user may not write job
state (scripts/redis_acl.py's `client` user) only reports it; the next scheduler fails it.
"""
from __future__ import annotations

import time

from xfed.broker.heartbeat import alive_nodes, scheduler_alive
from xfed.broker.jobrecord import Job, JobState
from xfed.broker.jobstore import JobStore
from xfed.broker.messages import job_event
from xfed.broker.streams import ControlStream
from xfed.errors import BrokerError


def orphaned(r, keys, job: Job, *, stale_s: float = 0.0) -> bool:
    """Whether `job` is active, its record unchanged for `stale_s` seconds (the scheduler writes it
    whenever events come), and neither its scheduler nor any participant holds a heartbeat lease."""
    return (job.active and time.time() - (job.updated or 0.0) > stale_s and not scheduler_alive(r, keys)
            and not alive_nodes(r, keys, job.participants))


def end_if_orphaned(r, keys, jobs: JobStore, job: Job, *, recheck_s: float = 2.0,
                    stale_s: float = 60.0) -> tuple[Job, str]:
    """FAIL `job` when it is orphaned (record older than `stale_s`; checked twice, `recheck_s`
    apart). Returns the job as it is now and a one-line note ("" when nothing was wrong)."""
    if not orphaned(r, keys, job, stale_s=stale_s):
        return job, ""
    time.sleep(recheck_s)
    job = jobs.require(job.job_id)
    if not orphaned(r, keys, job, stale_s=stale_s):
        return job, ""
    reason = (f"orphaned: neither the scheduler nor any node ({', '.join(job.participants)}) has a heartbeat; "
              f"resume with -c start --resume {job.job_id} once they run again")
    try:
        if jobs.transition(job.job_id, JobState.FAILED, reason=reason, node=""):
            ControlStream(r, keys.job_events(job.job_id), maxlen=100_000).add(
                job_event(job.job_id, JobState.FAILED.value, job.stage, reason=reason))
            jobs.expire(job.job_id)
    except BrokerError as err:  # e.g. an ACL user that may only read job state
        return job, f"job {job.job_id} is {job.state.value} but {reason} (could not mark it FAILED: {err})"
    return jobs.require(job.job_id), f"job {job.job_id} marked FAILED: {reason}"
