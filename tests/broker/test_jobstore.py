"""The Redis job store: compare-and-set, index, expiry, resume, ids (the record itself: test_jobrecord.py)."""
from __future__ import annotations

import time

import pytest

from xfed.broker.jobrecord import JobState, NodeStatus
from xfed.broker.jobstore import JobStore
from xfed.broker.keys import Keys
from xfed.errors import JobError

S = JobState


@pytest.mark.integration
def test_store_cas_first_outcome_wins_and_expiry(redis_server):
    r = redis_server.client()
    keys = Keys("jt")
    store = JobStore(r, keys, retention_s=100)
    a, b = store.create(["n1", "n2"]), store.create(["n1", "n2"])
    assert (a, b) == ("1", "2")
    assert store.get(a).state is S.PENDING
    assert store.transition(a, S.RUNNING, stage=0)
    job = store.get(a)
    assert job.state is S.RUNNING and job.stage == 0 and job.started is not None
    assert store.transition(a, S.FAILED, reason="n1: boom", node="n1")
    assert not store.transition(a, S.STOPPED, reason="late stop")  # first outcome wins
    job = store.get(a)
    assert (job.state, job.reason, job.node) == (S.FAILED, "n1: boom", "n1") and job.ended >= job.started
    assert [j.job_id for j in store.list()] == ["2", "1"]
    assert [j.job_id for j in store.active()] == ["2"]
    store.set_node(a, "n2", NodeStatus(state="stopped", stage=0))
    assert store.node(a, "n2").state == "stopped"
    r.xadd(keys.mailbox(a, 0, "n1", "n2"), {b"d": b"x"})
    r.xadd(keys.job_events(a), {b"m": b"{}"})
    assert store.expire(a) == 1
    assert not r.exists(keys.mailbox(a, 0, "n1", "n2"))
    assert 0 < r.ttl(keys.job(a)) <= 100 and 0 < r.ttl(keys.job_events(a)) <= 100
    with pytest.raises(JobError, match="job 99: no such job"):
        store.transition("99", S.RUNNING)
    r.delete(keys.job(b))
    time.sleep(0)
    assert [j.job_id for j in store.list()] == ["1"]  # expired hash tidied from the index
    assert store.get("42") is None


@pytest.mark.integration
def test_resume_is_atomic_and_clears_the_outcome(redis_server):
    r = redis_server.client()
    keys = Keys("jr")
    store = JobStore(r, keys, retention_s=100)
    job_id = store.create(["n1"])
    assert not store.resume(job_id, stage=0, attempt=1)  # PENDING: nothing to resume
    store.transition(job_id, S.RUNNING, stage=2)
    store.transition(job_id, S.STOPPED, reason="by client")
    store.expire(job_id)
    assert store.resume(job_id, stage=2, attempt=1)
    job = store.get(job_id)
    assert (job.state, job.stage, job.attempt, job.reason, job.ended) == (S.RUNNING, 2, 1, "", None)
    assert r.ttl(keys.job(job_id)) == -1
    assert not store.resume(job_id, stage=2, attempt=2)


@pytest.mark.integration
def test_job_ids_never_go_back_below_a_known_id(redis_server):
    r = redis_server.client()
    store = JobStore(r, Keys("jc"))
    assert store.new_job_id() == "1"
    r.flushall()  # Redis lost its data
    assert store.new_job_id(above=1) == "2" and store.new_job_id(above=1) == "3"
