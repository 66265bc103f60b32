"""Several jobs on one federation (fed_conf max_concurrent_jobs): the scheduler loop against a real Redis."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.scheduler.test_scheduler_loop import (
    NODES,
    ask,
    commands,
    event,
    steps,
    world,  # noqa: F401 - the fixture, reused
)
from xfed.broker.jobrecord import JobState
from xfed.errors import JobError
from xfed.scheduler.capacity import capacity_refusal, only_active_job
from xfed.scheduler.core import Scheduler

pytestmark = pytest.mark.integration


@pytest.fixture
def world2(world):  # noqa: F811 - the same world with room for two jobs
    world.sched = Scheduler(fed=SimpleNamespace(node_ids=NODES, heartbeat_interval=0.2, config_dir=None,
                                                identities={}, max_concurrent_jobs=2, failover_window_s=0.0), r=world.r, keys=world.keys)
    world.sched.requests.ensure_group("scheduler")
    return world


def _job(job_id: str, state: JobState = JobState.RUNNING):
    return SimpleNamespace(job_id=job_id, state=state)


def test_capacity_words():
    assert capacity_refusal([], 1) == ""
    assert capacity_refusal([_job("7")], 1) == "job 7 is still RUNNING; wait for it or stop it (-c stop 7)"
    assert capacity_refusal([_job("7")], 2) == ""
    refusal = capacity_refusal([_job("10"), _job("9")], 2)
    assert refusal.startswith("2 jobs are running (9, 10), max_concurrent_jobs is 2") and "--job_id" in refusal
    assert only_active_job([_job("4")]) == "4"
    with pytest.raises(JobError, match="no job is running"):
        only_active_job([])
    with pytest.raises(JobError, match=r"2 jobs are running \(3, 4\); say which one: -c stop --job_id N"):
        only_active_job([_job("4"), _job("3")])


def test_two_jobs_run_side_by_side_and_end_on_their_own(world2):
    w = world2
    assert ask(w, {"type": "start"}) == {"ok": True, "job": "1"}
    assert ask(w, {"type": "start"}) == {"ok": True, "job": "2"}
    third = ask(w, {"type": "start"})
    assert third["ok"] is False and third["error"].startswith("2 jobs are running (1, 2)")
    runs = [(c["job"], c["stage"]) for c in commands(w, "a") if c["type"] == "run_stage"]
    assert runs == [("1", 0), ("2", 0)]
    # a bare stop does not guess which of two jobs is meant
    assert ask(w, {"type": "stop"}) == {"ok": False, "error": "2 jobs are running (1, 2); say which one: "
                                                              "-c stop --job_id N"}
    for n in NODES:  # job 2 finishes its stage while job 1 is still in stage 0
        event(w, "2", n, "done", n_stages=1)
    event(w, "1", "a", "done", n_stages=1)
    steps(w)
    assert w.sched.jobs.get("2").state is JobState.SUCCESSFUL
    assert w.sched.jobs.get("1").state is JobState.RUNNING
    assert ask(w, {"type": "start"}) == {"ok": True, "job": "3"}  # job 2's slot is free again
    assert ask(w, {"type": "stop", "job": "1"}) == {"ok": True, "job": "1", "state": "STOPPED"}
    stops = [c["job"] for c in commands(w, "b") if c["type"] == "stop_job"]
    assert stops == ["1"]  # only the stopped job's stages are told to stop
    assert w.sched.jobs.get("3").state is JobState.RUNNING
    assert ask(w, {"type": "stop"}) == {"ok": True, "job": "3", "state": "STOPPED"}  # the only one left


def test_a_dead_node_fails_every_job_it_takes_part_in(world2):
    w = world2
    ask(w, {"type": "start"})
    ask(w, {"type": "start"})
    w.beats["b"].stop(deregister=False)
    for _ in range(200):
        w.sched.step()
        if all(w.sched.jobs.get(j).state is JobState.FAILED for j in ("1", "2")):
            break
    for j in ("1", "2"):
        job = w.sched.jobs.get(j)
        assert job.state is JobState.FAILED and job.node == "b" and "heartbeat expired" in job.reason


def test_a_resume_counts_as_a_running_job(world2):
    w = world2
    ask(w, {"type": "start"})
    ask(w, {"type": "start"})
    event(w, "1", "a", "error", message="killed")
    steps(w)
    assert w.sched.jobs.get("1").state is JobState.FAILED
    assert ask(w, {"type": "start"})["job"] == "3"  # job 1's slot
    refused = ask(w, {"type": "start", "resume": "1"})
    assert refused["ok"] is False and refused["error"].startswith("2 jobs are running (2, 3)")
    ask(w, {"type": "stop", "job": "3"})
    assert ask(w, {"type": "start", "resume": "1"}) == {"ok": True, "job": "1", "stage": 0, "attempt": 1}
    runs = [(c["job"], c["attempt"]) for c in commands(w, "b") if c["type"] == "run_stage"]
    assert runs == [("1", 0), ("2", 0), ("3", 0), ("1", 1)]
