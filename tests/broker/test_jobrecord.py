"""A job record without Redis (xfed/broker/jobrecord.py): the state machine, and reading a hash."""
from __future__ import annotations

import pytest

from xfed.broker.jobrecord import (
    Job,
    JobState,
    NodeStatus,
    can_resume,
    can_transition,
    job_from_hash,
    job_to_hash,
    parse_state,
)

S = JobState


@pytest.mark.parametrize("old,new,ok", [
    (S.PENDING, S.RUNNING, True), (S.PENDING, S.FAILED, True), (S.PENDING, S.STOPPED, True),
    (S.PENDING, S.SUCCESSFUL, False), (S.RUNNING, S.RUNNING, True), (S.RUNNING, S.SUCCESSFUL, True),
    (S.RUNNING, S.FAILED, True), (S.RUNNING, S.STOPPED, True), (S.RUNNING, S.PENDING, False),
    (S.FAILED, S.STOPPED, False), (S.STOPPED, S.FAILED, False), (S.SUCCESSFUL, S.RUNNING, False),
    (S.FAILED, S.RUNNING, False),
])
def test_state_machine_transitions(old, new, ok):
    assert can_transition(old, new) is ok


def test_terminal_states_are_final():
    for t in (S.SUCCESSFUL, S.FAILED, S.STOPPED):
        assert t.terminal
        assert not any(can_transition(t, n) for n in S)
    assert not S.RUNNING.terminal and not S.PENDING.terminal


def test_unknown_state_reads_as_corrupt_with_the_reason_naming_the_job():
    assert parse_state(b"BOGUS", job_id="7") is S.CORRUPT
    job = job_from_hash("7", {b"state": b"BOGUS"})
    assert job.state is S.CORRUPT and job.state.terminal and not job.active
    assert "unreadable job record 7: unknown state 'BOGUS'" in job.reason
    assert "participants missing" in job.reason
    assert not can_resume(job.state) and not any(can_transition(S.CORRUPT, n) for n in S)


def test_job_from_hash_tolerates_garbage_node_fields_but_not_garbage_core_fields():
    job = job_from_hash("3", {b"state": b"RUNNING", b"stage": b"0", b"participants": b'["n1", "n2"]',
                              b"node:n1": b"[1,2]", b"node:n2": NodeStatus(state="done", stage=0).to_json()})
    assert job.state is S.RUNNING and job.stage == 0 and job.participants == ["n1", "n2"]
    assert job.nodes["n1"].message == "unreadable node status"
    assert job.nodes["n2"].state == "done"
    bad = job_from_hash("3", {b"state": b"RUNNING", b"stage": b"x", b"participants": b"{not json"})
    assert bad.state is S.CORRUPT and "stage 'x' is not an integer" in bad.reason
    assert "participants missing or not a list" in bad.reason
    half = job_from_hash("4", {b"cursor": b"5-0", b"updated": b"1.0"})  # re-created after data loss
    assert half.state is S.CORRUPT and "no state field" in half.reason


def test_only_failed_or_stopped_jobs_resume():
    assert [s for s in S if can_resume(s)] == [S.FAILED, S.STOPPED]


def test_a_job_written_as_a_hash_reads_back_the_same():
    job = Job(job_id="9", state=S.STOPPED, stage=1, attempt=2, n_stages=3, reason="stopped by alice", node="n2",
              participants=["n1", "n2"], created=1.5, started=2.25, ended=9.75, updated=10.0,
              nodes={"n1": NodeStatus(state="done", stage=1), "n2": NodeStatus(state="stopped", stage=1)},
              extra={"uid": "abc123", "cursor": "5-0"})
    as_redis = {k.encode(): v.encode() for k, v in job_to_hash(job).items()}  # what HGETALL answers
    assert job_from_hash("9", as_redis) == job
    fresh = Job(job_id="4", state=S.PENDING, participants=["n1"], created=1.0, updated=1.0)
    assert job_from_hash("4", job_to_hash(fresh)) == fresh and "started" not in job_to_hash(fresh)
