"""Scheduler + assist trainer + 2 trainers as real processes over a real redis-server.

The tests share one federation (module fixture) and run in file order; each leaves it idle and
healthy for the next, which is itself part of what is tested (daemons accept the next job).
"""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

pytestmark = pytest.mark.integration

FAST = {"rounds": 3, "dim": 8, "weighting": "index"}
SLOW = {"rounds": 40, "dim": 8, "round_delay_s": 0.25}
# What a loaded 2-core machine may add to "within 3 heartbeat intervals" (the scheduler's and the
# daemons' own turn-around). Still far below any other way a dead node would surface: the job would
# run for 10 s more, or its peers wait 600 s for the dead node's upload.
LATENCY_S = 1.5


def start(fed, *extra: str) -> str:
    """`-c start` through the CLI when flags matter, else the same request in-process (saves a Python start)."""
    if extra:
        res = fed.client("-c", "start", *extra)
        assert res.returncode == 0, res.stderr + fed.logs()
        return res.stdout.split()[0]
    from xfed.client import Client
    from xfed.config import load_fed_conf

    reply = Client(load_fed_conf(fed.config), fed.redis_client(), fed.keys()).request({"type": "start"})
    assert reply["ok"], f"{reply}\n{fed.logs()}"
    return reply["job"]


def running_children(fed, job_id: str, n: int = 3) -> dict[str, int]:
    """Wait until every node's stage process is running; return their pids."""
    def ready():
        job = fed.store().require(job_id)
        pids = {k: s.pid for k, s in job.nodes.items() if s.pid and s.state == "running"}
        return pids if len(pids) == n and job.state.value == "RUNNING" else None

    return fed.wait_for(ready, f"the stage processes of job {job_id}")


def assert_all_dead(fed, pids, timeout: float = 60.0) -> None:
    fed.wait_for(lambda: not any(fed.pid_alive(p) for p in pids), f"pids {pids} to exit", timeout)


def consumed(r, key: bytes | str) -> bool:
    """Every consumer group of stream `key` was handed its newest entry and acked all it was handed."""
    last = r.xinfo_stream(key)["last-generated-id"]
    return all(g["pending"] == 0 and g["last-delivered-id"] == last for g in r.xinfo_groups(key))


def assert_daemons_alive(fed) -> None:
    for name, proc in fed.procs.items():
        assert proc.poll() is None, f"{name} exited {proc.returncode}\n{fed.log(name)}"


def test_happy_path_two_stages_follow_status_list_and_nodes(fed):
    fed.write_config(FAST, stages=2)
    res = fed.client("-c", "start", "--follow")
    assert res.returncode == 0, res.stdout + res.stderr + fed.logs()
    job_id = res.stdout.split()[0]
    assert f"job {job_id} SUCCESSFUL" in res.stdout
    assert "RUNNING stage 0" in res.stdout and "RUNNING stage 1" in res.stdout
    assert "node-1: stage 1 done" in res.stdout and "node-1 round 2" in res.stdout

    status = json.loads(fed.client("-c", "status", job_id, "--json").stdout)
    assert status["state"] == "SUCCESSFUL" and status["ended"] >= status["started"] >= status["created"]
    assert (status["stage"], status["n_stages"]) == (1, 2)
    assert {n: s["state"] for n, s in status["nodes"].items()} == {n: "done" for n in fed.nodes}
    assert {(r["stage"], r["node"], r["round"]) for r in status["rounds"]} >= {(0, "node-1", 2), (1, "assist_trainer", 2)}
    assert all(r["max_abs_err"] < 1e-4 for r in status["rounds"])
    assert job_id in fed.client("-c", "list").stdout
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in fed.client("-c", "nodes").stdout.splitlines()
            if line.startswith("│")]
    assert {row[0]: row[2] for row in rows} == {n: "yes" for n in fed.nodes + ["scheduler"]}, rows
    out = json.loads((fed.root / "out" / job_id / "node-1" / "horizontal_mean.json").read_text())
    assert out["result"]["rounds"] == 3 and out["result"]["max_abs_err"] < 1e-4


def test_start_with_a_node_down_is_refused_naming_it_then_waits(fed):
    fed.stop("node-2")  # graceful: deregisters at once
    res = fed.client("-c", "start")
    assert res.returncode == 2 and "node-2" in res.stderr and "not alive" in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1  # one line, no traceback
    fed.start_node("node-2")
    job_id = start(fed, "--wait-nodes", "120")
    assert fed.wait_job(job_id).state.value == "SUCCESSFUL"


def test_killed_stage_process_fails_job_naming_node_within_three_heartbeats(fed):
    fed.write_config(SLOW)
    job_id = start(fed)
    pids = running_children(fed, job_id)
    killed_at = time.time()
    os.kill(pids["node-1"], signal.SIGKILL)
    job = fed.wait_job(job_id)
    assert job.state.value == "FAILED" and job.node == "node-1", f"{job}\n{fed.logs()}"
    assert "SIGKILL" in job.reason and "node-1" in job.reason
    # the scheduler's own clock: how fast the test notices does not count
    assert job.ended - killed_at <= 3 * fed.interval + LATENCY_S, job.ended - killed_at
    assert_all_dead(fed, list(pids.values()))
    assert_daemons_alive(fed)  # the next test's jobs run on them


def test_a_frozen_stage_process_fails_the_job_naming_node_and_last_progress(fed):
    # daemons read it at each stage start; short for the test, yet above what a loaded 2-core CI
    # machine may starve a healthy stage process for
    limit = 5.0
    fed.write_config(SLOW, fed_extra={"progress_timeout": limit})
    try:
        job_id = start(fed)
        pids = running_children(fed, job_id)

        def first_round():
            job = fed.store().require(job_id)
            assert job.state.value == "RUNNING", f"{job}\n{fed.logs()}"
            return job.nodes["node-1"].progress.get("round", 0) >= 1

        fed.wait_for(first_round, "node-1's first round")
        frozen_at = time.time()
        os.kill(pids["node-1"], signal.SIGSTOP)  # alive to every heartbeat, but its work stands still
        job = fed.wait_job(job_id, timeout=60)
        assert job.state.value == "FAILED" and job.node == "node-1", f"{job}\n{fed.logs()}"
        assert "made no progress for" in job.reason and "the process is stopped (SIGSTOP?)" in job.reason
        assert "last progress: round" in job.reason
        assert job.ended - frozen_at <= 2 * limit + LATENCY_S, job.ended - frozen_at
        assert_all_dead(fed, list(pids.values()))
        assert_daemons_alive(fed)
    finally:
        fed.write_config(FAST)


def test_stop_mid_job_then_resume_as_a_new_attempt(fed):
    fed.write_config(SLOW)
    job_id = start(fed)
    pids = running_children(fed, job_id)
    res = fed.client("-c", "stop", job_id)
    assert res.returncode == 0 and f"job {job_id} STOPPED" in res.stdout, res.stderr
    job = fed.wait_job(job_id)
    assert job.state.value == "STOPPED" and job.ended
    assert_all_dead(fed, list(pids.values()))
    res = fed.client("-c", "stop", job_id)
    assert res.returncode == 2 and "already ended STOPPED" in res.stderr
    fed.wait_for(lambda: all(s.state == "stopped" for s in fed.store().require(job_id).nodes.values()),
                 "every node to report stopped")
    assert_daemons_alive(fed)
    fed.write_config(FAST)
    res = fed.client("-c", "start", "--resume", job_id, "--follow")
    assert res.returncode == 0, res.stdout + res.stderr + fed.logs()
    assert res.stdout.split()[0] == job_id and "attempt 1" in res.stderr and f"job {job_id} SUCCESSFUL" in res.stdout
    job = fed.store().require(job_id)
    assert (job.state.value, job.attempt) == ("SUCCESSFUL", 1)
    assert (fed.root / "work" / "node-1" / f"job-{job_id}" / "stage-0.1" / "stage.log").exists()


def test_killed_daemon_fails_job_by_heartbeat_and_leaves_no_process(fed):
    fed.write_config(SLOW)
    job_id = start(fed)
    pids = running_children(fed, job_id)
    killed_at = time.time()
    fed.procs["node-2"].send_signal(signal.SIGKILL)
    fed.procs["node-2"].wait(30)
    job = fed.wait_job(job_id)
    assert job.state.value == "FAILED" and job.node == "node-2" and "heartbeat" in job.reason, job
    assert job.ended - killed_at <= 3 * fed.interval + LATENCY_S, job.ended - killed_at
    assert_all_dead(fed, list(pids.values()))  # node-2's orphan too (PDEATHSIG)
    fed.start_node("node-2")
    fed.wait_alive(["node-2"])  # the next test's job runs on the restarted daemon


def test_malformed_frame_in_a_mailbox_fails_the_job_and_daemons_survive(fed):
    keys, r = fed.keys(), fed.redis_client()
    fed.write_config(SLOW)
    job_id = start(fed)
    running_children(fed, job_id)
    box = keys.mailbox(job_id, 0, "node-1", "assist_trainer", 0)
    r.xadd(box, {b"q": b"0", b"i": b"0", b"n": b"1", b"z": b"99999999999", b"d": b"\x00garbage"})
    job = fed.wait_job(job_id)
    assert job.state.value == "FAILED" and job.node == "node-1", f"{job}\n{fed.logs()}"
    # garbage on the control plane: a node's command stream and the requests stream
    r.xadd(keys.node_cmd("node-1"), {b"m": b"{not json"})
    r.xadd(keys.node_cmd("node-2"), {b"m": json.dumps({"type": "run_stage", "job": "1"}).encode()})
    r.xadd(keys.node_cmd("assist_trainer"), {b"m": json.dumps(
        {"type": "run_stage", "job": "9 9", "stage": -1, "attempt": 0, "participants": 3}).encode()})
    r.xadd(keys.requests(), {b"m": b"\x80\x81"})
    streams = [keys.node_cmd(n) for n in ("node-1", "node-2", "assist_trainer")] + [keys.requests()]
    fed.wait_for(lambda: all(consumed(r, k) for k in streams), "the daemons and the scheduler to take the garbage")
    assert_daemons_alive(fed)  # and the next test's jobs run on them


def test_a_party_config_error_fails_the_job_naming_file_and_follow_exits_1(fed):
    fed.write_config(FAST)
    (fed.config / "trainer_config_node-2.json").write_text('[{"identity": "label_trainer", ')
    res = fed.client("-c", "start", "--follow")
    assert res.returncode == 1, res.stdout + res.stderr
    job = fed.store().require(res.stdout.split()[0])
    assert job.state.value == "FAILED" and job.node == "node-2" and "trainer_config_node-2.json" in job.reason
    assert f"job {job.job_id} FAILED: node-2: " in res.stdout
    assert_daemons_alive(fed)


def test_malformed_event_fails_the_running_job(fed):
    keys, r = fed.keys(), fed.redis_client()
    fed.write_config(SLOW)
    job_id = start(fed)
    running_children(fed, job_id)
    r.xadd(keys.job_events(job_id), {b"m": b'{"type": "done", "job": 1}'})
    job = fed.wait_job(job_id)
    assert job.state.value == "FAILED" and "malformed event" in job.reason
    assert_daemons_alive(fed)


def test_restarted_scheduler_reattaches_to_the_running_job(fed):
    fed.write_config({"rounds": 12, "dim": 8, "round_delay_s": 0.25})
    job_id = start(fed)
    running_children(fed, job_id)
    fed.stop("scheduler", signal.SIGKILL)
    fed.start_scheduler()
    job = fed.wait_job(job_id)
    assert job.state.value == "SUCCESSFUL", f"{job}\n{fed.logs()}"
    assert "re-attached to job " + job_id in (fed.root / "scheduler.log").read_text()  # all of it, not the tail


def test_a_redis_outage_mid_job_longer_than_the_heartbeat_ttl_is_ridden_out(fed):
    fed.write_config({"rounds": 12, "dim": 8, "round_delay_s": 0.25})
    job_id = start(fed)
    running_children(fed, job_id)
    fed.redis.restart(keep_data=True, down_s=2.0)  # every heartbeat key lapses meanwhile (TTL 1.5 s)
    job = fed.wait_job(job_id)
    assert job.state.value == "SUCCESSFUL", f"{job}\n{fed.logs()}"
    assert_daemons_alive(fed)


def test_daemons_reconnect_after_redis_restart_while_idle(fed):
    last = max(int(j) for j in fed.store().job_ids())
    fed.redis.restart(keep_data=False, down_s=1.0)
    fed.wait_alive(fed.nodes + ["scheduler"])
    fed.write_config(FAST)
    res = fed.client("-c", "start", "--follow", "--bar")
    assert res.returncode == 0 and "SUCCESSFUL" in res.stdout, res.stdout + res.stderr + fed.logs()
    assert int(res.stdout.split()[0]) > last  # no job id handed out twice although Redis forgot them
    assert "━" in res.stdout  # the progress bars were drawn
    assert_daemons_alive(fed)
