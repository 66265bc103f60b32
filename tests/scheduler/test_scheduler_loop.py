"""The scheduler loop driven step by step against a real Redis: requests, stages in order, failures."""
from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from xfed.broker.heartbeat import Heartbeat
from xfed.broker.jobrecord import JobState
from xfed.broker.keys import Keys
from xfed.broker.streams import ControlStream
from xfed.node.events import EventReporter
from xfed.scheduler.core import Scheduler

pytestmark = pytest.mark.integration
NODES = ["a", "b"]


@pytest.fixture
def world(redis_server, request):
    r = redis_server.client()
    keys = Keys("sl" + str(abs(hash(request.node.name)) % 10_000))
    beats = {n: Heartbeat(r, keys, n, "label_trainer", interval=0.2).start() for n in NODES}
    sched = Scheduler(fed=SimpleNamespace(node_ids=NODES, heartbeat_interval=0.2, config_dir=None, identities={},
                                    max_concurrent_jobs=1, failover_window_s=0.0), r=r, keys=keys)
    sched.requests.ensure_group("scheduler")
    yield SimpleNamespace(r=r, keys=keys, sched=sched, beats=beats)
    for hb in beats.values():
        hb.stop()


def ask(w, msg: dict) -> dict:
    rid = f"req{time.monotonic_ns()}"
    ControlStream(w.r, w.keys.requests()).add({**msg, "request_id": rid})
    for _ in range(20):
        w.sched.step()
        got = w.r.lpop(w.keys.reply(rid))
        if got:
            return json.loads(got)
    raise AssertionError("no reply")


def commands(w, node: str) -> list[dict]:
    return [e.msg for e in ControlStream(w.r, w.keys.node_cmd(node)).read("0-0")]


def event(w, job, node, kind, stage=0, **fields):
    EventReporter(w.r, w.keys, job, node, stage).emit(kind, **fields)


def steps(w, n=5):
    for _ in range(n):
        w.sched.step()


def test_stages_run_in_order_and_late_events_are_ignored(world):
    w = world
    reply = ask(w, {"type": "start"})
    assert reply == {"ok": True, "job": "1"}
    assert [c["stage"] for c in commands(w, "a") if c["type"] == "run_stage"] == [0]
    assert ask(w, {"type": "start"})["error"].startswith("job 1 is still RUNNING")
    for n in NODES:
        event(w, "1", n, "status", state="running", pid=123)
        event(w, "1", n, "done", n_stages=2)
    steps(w)
    job = w.sched.jobs.get("1")
    assert (job.state, job.stage) == (JobState.RUNNING, 1)
    assert [c["stage"] for c in commands(w, "b") if c["type"] == "run_stage"] == [0, 1]
    event(w, "1", "a", "error", stage=0, message="late")  # stage 0 is over: ignored
    event(w, "1", "zz", "error", stage=1, message="not a participant")
    steps(w)
    assert w.sched.jobs.get("1").state is JobState.RUNNING
    for n in NODES:
        event(w, "1", n, "done", stage=1, n_stages=2)
    steps(w)
    job = w.sched.jobs.get("1")
    assert job.state is JobState.SUCCESSFUL and job.n_stages == 2 and job.ended >= job.started
    states = [e.msg["state"] for e in ControlStream(w.r, w.keys.job_events("1")).read("0-0") if e.msg["type"] == "job"]
    assert states == ["RUNNING", "RUNNING", "SUCCESSFUL"]
    assert not any(c["type"] == "stop_job" for c in commands(w, "a"))


def test_node_error_fails_the_job_naming_it_and_stops_the_others(world):
    w = world
    job_id = ask(w, {"type": "start"})["job"]
    event(w, job_id, "b", "error", message="CUDA out of memory")
    steps(w)
    job = w.sched.jobs.get(job_id)
    assert job.state is JobState.FAILED and job.node == "b" and job.reason == "b: CUDA out of memory"
    assert any(c["type"] == "stop_job" and c["job"] == job_id for c in commands(w, "a"))
    assert job.nodes["b"].state == "failed"
    assert ask(w, {"type": "stop", "job": job_id})["error"] == f"job {job_id} already ended FAILED"


def test_disagreeing_stage_counts_fail(world):
    w = world
    job_id = ask(w, {"type": "start"})["job"]
    event(w, job_id, "a", "done", n_stages=1)
    event(w, job_id, "b", "done", n_stages=3)
    steps(w)
    job = w.sched.jobs.get(job_id)
    assert job.state is JobState.FAILED and "a has 1, b has 3" in job.reason


def test_malformed_event_fails_the_job(world):
    w = world
    job_id = ask(w, {"type": "start"})["job"]
    w.r.xadd(w.keys.job_events(job_id), {b"m": b'{"type": "progress"}'})
    steps(w)
    job = w.sched.jobs.get(job_id)
    assert job.state is JobState.FAILED and "malformed event" in job.reason and "lacks field" in job.reason


def test_expired_heartbeat_fails_the_job_within_three_intervals(world):
    w = world
    job_id = ask(w, {"type": "start"})["job"]
    w.beats["b"].stop(deregister=False)  # like a SIGKILLed daemon: the key just runs out
    t0 = time.monotonic()
    while w.sched.jobs.get(job_id).state is JobState.RUNNING:
        w.sched.step()
        assert time.monotonic() - t0 < 3 * 0.2 + 0.5
    job = w.sched.jobs.get(job_id)
    assert job.state is JobState.FAILED and job.node == "b" and "heartbeat expired" in job.reason


def test_stop_and_refusals(world):
    w = world
    assert ask(w, {"type": "stop"}) == {"ok": False, "error": "no job is running"}
    job_id = ask(w, {"type": "start"})["job"]
    assert ask(w, {"type": "stop"}) == {"ok": True, "job": job_id, "state": "STOPPED"}
    assert w.sched.jobs.get(job_id).state is JobState.STOPPED
    w.beats["a"].stop()
    reply = ask(w, {"type": "start"})
    assert reply["ok"] is False and reply["missing"] == ["a"] and "not alive" in reply["error"]
    w.beats["a"] = Heartbeat(w.r, w.keys, "a", "label_trainer", interval=0.2).start()
    assert ask(w, {"type": "start", "resume": "99"})["error"] == "job 99: no such job (unknown id, or expired)"


def test_resume_runs_the_failed_stage_again_as_a_new_attempt(world):
    w = world
    job_id = ask(w, {"type": "start"})["job"]
    for n in NODES:
        event(w, job_id, n, "done", n_stages=2)
    steps(w)
    event(w, job_id, "a", "error", stage=1, message="killed")
    steps(w)
    assert w.sched.jobs.get(job_id).state is JobState.FAILED
    assert w.r.ttl(w.keys.job(job_id)) > 0
    reply = ask(w, {"type": "start", "resume": job_id})
    assert reply == {"ok": True, "job": job_id, "stage": 1, "attempt": 1}
    job = w.sched.jobs.get(job_id)
    assert (job.state, job.stage, job.attempt, job.reason, job.ended) == (JobState.RUNNING, 1, 1, "", None)
    assert w.r.ttl(w.keys.job(job_id)) == -1  # no longer expiring
    runs = [(c["stage"], c["attempt"]) for c in commands(w, "b") if c["type"] == "run_stage"]
    assert runs == [(0, 0), (1, 0), (1, 1)]
    assert "still RUNNING" in ask(w, {"type": "start", "resume": job_id})["error"]
    EventReporter(w.r, w.keys, job_id, "a", 1, 0).emit("done", n_stages=2)  # the old attempt: ignored
    for n in NODES:
        EventReporter(w.r, w.keys, job_id, n, 1, 1).emit("done", n_stages=2)
    steps(w)
    assert w.sched.jobs.get(job_id).state is JobState.SUCCESSFUL
    assert "only FAILED or STOPPED" in ask(w, {"type": "start", "resume": job_id})["error"]


def test_restarted_scheduler_finishes_a_job_whose_stage_ended_meanwhile(world):
    w = world
    job_id = ask(w, {"type": "start"})["job"]
    for n in NODES:
        event(w, job_id, n, "done", n_stages=1)
    fresh = Scheduler(fed=SimpleNamespace(node_ids=NODES, heartbeat_interval=0.2, config_dir=None, identities={},
                                    max_concurrent_jobs=1, failover_window_s=0.0), r=w.r, keys=w.keys)
    fresh.reattach()
    for _ in range(5):
        fresh.step()
    assert fresh.jobs.get(job_id).state is JobState.SUCCESSFUL
