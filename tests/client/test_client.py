"""Client verbs against a real Redis without daemons: rendering, JSON, refusals, stop without a scheduler."""
from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
from rich.console import Console

from xfed.broker.heartbeat import Heartbeat
from xfed.broker.jobrecord import JobState, NodeStatus
from xfed.broker.jobstore import JobStore
from xfed.broker.keys import Keys
from xfed.broker.streams import ControlStream
from xfed.client import Client
from xfed.errors import JobError
from xfed.node.events import EventReporter

pytestmark = pytest.mark.integration
NODES = ["n1", "assist"]


@pytest.fixture
def client(redis_server):
    r = redis_server.client()
    keys = Keys("cl")
    fed = SimpleNamespace(node_ids=NODES, heartbeat_interval=0.5, failover_window_s=0.0)
    c = Client(fed, r, keys, console=Console(record=True, width=200))
    c.test_keys = keys
    return c


def a_job(c: Client, state: JobState = JobState.RUNNING) -> str:
    job_id = c.jobs.create(NODES)
    c.jobs.transition(job_id, JobState.RUNNING, stage=0)
    c.jobs.set_node(job_id, "n1", NodeStatus(state="running", stage=0, pid=42,
                                             progress={"round": 2, "rounds": 5, "fraction": 0.4}))
    for rnd in (0, 1):
        EventReporter(c.r, c.test_keys, job_id, "n1", 0).report("metrics", {"round": rnd, "loss": 1.0 / (rnd + 1)})
    if state is not JobState.RUNNING:
        c.jobs.transition(job_id, state, reason="n1: boom" if state is JobState.FAILED else "")
    return job_id


def test_status_list_and_nodes_render(client, capsys):
    job_id = a_job(client)
    hb = Heartbeat(client.r, client.test_keys, "n1", "label_trainer", interval=0.5).start()
    try:
        assert client.status(None) == 0
        text = client.console.export_text()
        assert "RUNNING" in text and "2/5" in text and "42" in text and "loss" in text and "0.5" in text
        client.status(job_id, bar=True)
        assert "████████░░░░░░░░░░░░ round 2/5" in client.console.export_text()
        client.list()
        client.nodes()
        text = client.console.export_text()
        assert f"│ {job_id}" in text and "label_trainer" in text
        client.as_json = True
        capsys.readouterr()
        client.status(job_id)
        status = json.loads(capsys.readouterr().out)
        assert status["alive"] == ["n1"] and [r["round"] for r in status["rounds"]] == [0, 1]
        client.nodes()
        nodes = json.loads(capsys.readouterr().out)
        assert nodes["scheduler"] is False and nodes["nodes"]["n1"]["alive"] and not nodes["nodes"]["assist"]["alive"]
    finally:
        hb.stop()


def test_refusals_name_what_is_missing(client):
    with pytest.raises(JobError, match="no jobs yet"):
        client.status(None)
    with pytest.raises(JobError, match="job 7: no such job"):
        client.status("7")
    with pytest.raises(JobError, match="no scheduler is running for namespace 'cl'"):
        client.start()
    with pytest.raises(JobError, match=r"not alive after waiting 0.3 s: n1, assist"):
        client.start(wait_nodes=0.3)
    sched = Heartbeat(client.r, client.test_keys, "scheduler", "scheduler", interval=0.5,
                      key=client.test_keys.scheduler()).start()
    try:  # a registered scheduler that never answers: a bounded wait, then one line
        with pytest.raises(JobError, match="did not answer the start request within 0.5 s"):
            client.request({"type": "start"}, timeout=0.5)
    finally:
        sched.stop()


def test_with_a_failover_window_a_missing_scheduler_heartbeat_is_waited_for_then_refused(client):
    """A Sentinel failover can lose the scheduler's heartbeat key until its next beat (seen: Sentinel fell
    back to a master that came back empty): with `redis.failover_window` the client waits for it."""
    import threading
    import time

    ha = Client(SimpleNamespace(node_ids=NODES, heartbeat_interval=0.2, failover_window_s=1.0), client.r,
                client.test_keys)
    assert ha.scheduler_grace_s == pytest.approx(1.4) and client.scheduler_grace_s == 0.0
    t0 = time.monotonic()
    with pytest.raises(JobError, match="no scheduler is running"):
        ha.request({"type": "start"}, timeout=0.5)
    assert 1.3 < time.monotonic() - t0 < 5.0  # the grace, then one line (not the default's instant refusal)
    beats: list = []
    later = threading.Timer(0.6, lambda: beats.append(
        Heartbeat(client.r, client.test_keys, "scheduler", "scheduler", interval=0.5,
                  key=client.test_keys.scheduler()).start()))
    later.start()
    try:  # the heartbeat comes back within the grace: the request goes out (and, unanswered, times out)
        with pytest.raises(JobError, match="did not answer the start request within 0.3 s"):
            ha.request({"type": "start"}, timeout=0.3)
    finally:
        later.join()
        for hb in beats:
            hb.stop()


def test_stop_without_a_scheduler_stops_the_job_directly(client, capsys):
    with pytest.raises(JobError, match="no job is running"):
        client.stop(None)
    job_id = a_job(client)
    assert client.stop(None) == 0
    assert "STOPPED (no scheduler is running" in capsys.readouterr().out
    assert client.jobs.get(job_id).state is JobState.STOPPED
    cmds = [e.msg for e in ControlStream(client.r, client.test_keys.node_cmd("n1")).read("0-0")]
    assert cmds[-1]["type"] == "stop_job" and cmds[-1]["job"] == job_id
    with pytest.raises(JobError, match=f"job {job_id} already ended STOPPED"):
        client.stop(job_id)


def test_follow_exits_with_the_outcome(client, capsys):
    done = a_job(client, JobState.SUCCESSFUL)
    failed = a_job(client, JobState.FAILED)
    assert client.follow(done) == 0
    out = capsys.readouterr().out
    assert f"job {done} SUCCESSFUL" in out and "n1 round 1: loss=0.5" in out
    assert client.follow(failed, bar=True) == 1
    assert f"job {failed} FAILED: n1: boom" in capsys.readouterr().out
    assert JobStore(client.r, client.test_keys).get(failed).state is JobState.FAILED


def test_status_fits_100_columns_and_wide_shows_every_column(client, capsys):
    metrics = {"round": 3, "rounds": 10, "node": "n1", "step": 60, "train_loss": 1.162, "eval_loss": 0.6379,
               "exact_match": 0.3, "rouge_l": 0.8167, "aggregate_ms": 179.4, "mask_ms": 13.2, "unmask_ms": 0,
               "wait_ms": 164.6, "bytes_sent": 373752, "bytes_received": 189336, "peak_rss_mb": 480.7,
               "round_s": 0.681, "eta_s": 2.3}
    job_id = client.jobs.create(NODES)
    client.jobs.transition(job_id, JobState.RUNNING, stage=0)
    client.jobs.set_node(job_id, "n1", NodeStatus(state="failed", stage=0, pid=4242, message="x" * 300))
    EventReporter(client.r, client.test_keys, job_id, "n1", 0).report("metrics", metrics)
    capsys.readouterr()
    narrow = Client(client.fed, client.r, client.test_keys)  # its own console: what a terminal or pipe gets
    assert narrow.status(job_id) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 100, out
    assert "stage pid" in out and "4242" in out and "exact_match" in out and "bytes_sent" not in out
    assert "x" * 300 in out.replace("\n", "").replace("│", "").replace(" ", "")  # wrapped, not cut
    assert re.search(r"^stage\s+0\s*$", out, re.M), out  # counted from 0, as [STAGE_ID] and --follow count
    wide = Client(client.fed, client.r, client.test_keys, wide=True)
    assert wide.status(job_id) == 0
    out = capsys.readouterr().out
    assert all(k in out for k in metrics if k != "rounds")
    narrow.nodes()
    assert "daemon pid" in capsys.readouterr().out


def test_with_several_jobs_running_status_names_the_others_and_a_bare_stop_asks_which(client):
    first, second = a_job(client), a_job(client)
    client.status(None)  # the latest job, and a line for the other
    text = client.console.export_text()
    assert re.search(rf"^job +{second} ", text, re.M)
    assert f"also running: job {first} (-c status --job_id N)" in text
    with pytest.raises(JobError, match=rf"2 jobs are running \({first}, {second}\); say which one"):
        client.stop(None)  # no scheduler: stopped directly, but never a guess
    assert client.stop(first) == 0
    assert client.jobs.get(first).state is JobState.STOPPED and client.jobs.get(second).state is JobState.RUNNING
    assert client.stop(None) == 0  # one left: the bare stop means it, as before
    assert client.jobs.get(second).state is JobState.STOPPED
