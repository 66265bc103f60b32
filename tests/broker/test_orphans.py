"""A job whose scheduler and nodes are all gone is ended (FAILED, resumable) by whoever looks at it."""
from __future__ import annotations

import time

from xfed.broker.heartbeat import Heartbeat
from xfed.broker.jobrecord import JobState, can_resume
from xfed.broker.jobstore import JobStore
from xfed.broker.keys import Keys
from xfed.broker.orphans import end_if_orphaned


def _running(r, keys) -> tuple[JobStore, str]:
    jobs = JobStore(r, keys)
    job_id = jobs.create(["n1", "n2"])
    assert jobs.transition(job_id, JobState.RUNNING, stage=0)
    jobs.set_fields(job_id, updated=repr(time.time() - 120))  # nobody has written it for 2 minutes
    return jobs, job_id


def test_running_job_with_no_scheduler_and_no_node_becomes_failed_with_a_reason(redis_server):
    r, keys = redis_server.client(), Keys("orph")
    jobs, job_id = _running(r, keys)
    job, note = end_if_orphaned(r, keys, jobs, jobs.require(job_id), recheck_s=0.05)
    assert job.state is JobState.FAILED and can_resume(job.state)
    assert "orphaned" in job.reason and "--resume " + job_id in job.reason and "marked FAILED" in note
    assert r.ttl(keys.job(job_id)) > 0  # expires like any ended job
    events = [e for _, e in r.xrange(keys.job_events(job_id))]
    assert any(b'"FAILED"' in e[b"m"] for e in events)


def test_one_live_node_or_a_live_scheduler_keeps_it_running(redis_server):
    r, keys = redis_server.client(), Keys("orph2")
    jobs, job_id = _running(r, keys)
    hb = Heartbeat(r, keys, "n2", "label_trainer", interval=0.5).start()
    try:
        job, note = end_if_orphaned(r, keys, jobs, jobs.require(job_id), recheck_s=0.05)
        assert (job.state, note) == (JobState.RUNNING, "")
    finally:
        hb.stop()
    sched = Heartbeat(r, keys, "scheduler", "scheduler", interval=0.5, key=keys.scheduler()).start()
    try:
        job, note = end_if_orphaned(r, keys, jobs, jobs.require(job_id), recheck_s=0.05)
        assert (job.state, note) == (JobState.RUNNING, "")
    finally:
        sched.stop()
    fresh = JobStore(r, keys).require(job_id)
    jobs.set_fields(job_id, updated=repr(time.time()))  # just written: not (yet) orphaned
    assert end_if_orphaned(r, keys, jobs, jobs.require(job_id), recheck_s=0.05)[0].state is JobState.RUNNING
    jobs.set_fields(job_id, updated=repr(fresh.updated))
    assert end_if_orphaned(r, keys, jobs, jobs.require(job_id), recheck_s=0.05)[0].state is JobState.FAILED
