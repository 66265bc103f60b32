"""Dropout-tolerant secure aggregation with real processes: 4 label trainers, threshold 3, kill -9 mid-job.

horizontal_mean shares the aggregation path with horizontal_chatglm (xfed.aggregation) and checks
every round's mean against the weighted mean of the contributors the root names.
"""
from __future__ import annotations

import json
import signal
import time

import pytest

from tests.integration.conftest import serve

pytestmark = pytest.mark.integration

TRAINERS = ["node-1", "node-2", "node-3", "node-4"]
ENC = {"otp": {"key_bitlength": 64, "key_exchange": {"key_bitlength": 2048},
               "dropout": {"threshold": 3, "round_timeout_s": 3.0}}}
# float32 rounding of a mean of |x| < 4 (2^-22) dominates the fixed-point step (4 x 2^-32)
TOL = 4 * 2.0 ** -22
# rounds of the rejoin test: the first round without node-4 takes 2 x round_timeout_s, each later one ~1 s of
# grace, a restart takes 2-8 s on a loaded machine: 10 rounds leave it room to rejoin before the last
REJOIN_ROUNDS = 10


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    with serve(tmp_path_factory.mktemp("secagg"), trainers=list(TRAINERS)) as f:
        f.write_config({"rounds": 2, "dim": 8})
        f.start_all()
        yield f


def params(rounds: int) -> dict:
    return {"rounds": rounds, "dim": 8, "weighting": "index", "round_delay_s": 0.2, "tolerance": TOL,
            "encryption": ENC}


def start(fed) -> str:
    from xfed.client import Client
    from xfed.config import load_fed_conf

    reply = Client(load_fed_conf(fed.config), fed.redis_client(), fed.keys()).request({"type": "start"})
    assert reply["ok"], f"{reply}\n{fed.logs()}"
    return reply["job"]


def kill_node(fed, job_id: str, node: str) -> None:
    """kill -9 the node's daemon and its stage process (by pid), as a machine that goes away."""
    child = fed.child_pids(job_id).get(node)
    fed.procs[node].send_signal(signal.SIGKILL)
    if child:
        try:
            import os

            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
    fed.procs[node].wait(30)


def round_of(fed, job_id: str, node: str) -> int:
    job = fed.store().require(job_id)
    return int((job.nodes.get(node).progress or {}).get("round", 0)) if node in job.nodes else 0


def test_one_of_four_killed_mid_round_job_succeeds_and_the_restarted_node_rejoins_a_later_round(fed):
    """kill -9 node-4 mid-job: the survivors go on without it (the dead node named, each round's mean
    exactly its contributors'); restarted, it is re-dispatched as incarnation 1, admitted at a round
    boundary with the current global mean, and contributes to the later rounds; the job is SUCCESSFUL."""
    fed.write_config(params(REJOIN_ROUNDS))
    job_id = start(fed)
    fed.wait_for(lambda: round_of(fed, job_id, "node-4") >= 1, "node-4 to finish round 1")
    kill_node(fed, job_id, "node-4")
    fed.start_node("node-4")  # at once: its daemon waits out the dead one's heartbeat lease
    job = fed.wait_job(job_id, timeout=120)
    assert job.state.value == "SUCCESSFUL", (job, fed.logs())
    back = job.nodes["node-4"]
    assert back.state == "done" and "rejoined from round" in back.message and "incarnation 1" in back.message, back
    # the root's per-round record (its output file and the job record): who contributed
    out = json.loads((fed.root / "out" / job_id / "assist_trainer" / "horizontal_mean.json").read_text())
    rows = out["rounds"]
    assert len(rows) == REJOIN_ROUNDS and rows[0]["contributors"] == TRAINERS
    for row in rows:  # each round's mean against the plain weighted mean of that round's contributors
        assert row["max_abs_err"] <= TOL, row
    without = [row["round"] for row in rows if row["contributors"] == TRAINERS[:3]]
    assert without, rows
    rejoined = [row["round"] for row in rows if row["round"] > without[0] and row["contributors"] == TRAINERS]
    assert rejoined, [row["contributors"] for row in rows]
    mine = json.loads((fed.root / "out" / job_id / "node-4" / "horizontal_mean.json").read_text())
    first = mine["result"]["first_round"]
    assert without[0] < first <= rejoined[0] and [r["round"] for r in mine["rounds"]] == list(range(first, REJOIN_ROUNDS))
    assert mine["result"]["max_abs_err"] <= TOL
    rounds = json.loads(job.extra["secagg_rounds"])
    assert rounds[without[0]]["dropped"] == ["node-4"] and rounds[rejoined[0]]["contributors"] == TRAINERS
    assert json.loads(job.extra["rejoin:0.0"]) == {"node-4": {"incarnation": 1, "admitted": first}}
    status = fed.client("-c", "status", job_id)
    assert "node-4" in status.stdout and "dropped" in status.stdout and "rejoined from round" in status.stdout, \
        status.stdout + status.stderr


def test_two_of_four_killed_fail_promptly_naming_both_then_resume(fed):
    fed.write_config(params(40))
    job_id = start(fed)
    fed.wait_for(lambda: round_of(fed, job_id, "node-3") >= 1, "round 1")
    killed_at = time.time()
    for node in ("node-3", "node-4"):
        kill_node(fed, job_id, node)
    job = fed.wait_job(job_id, timeout=60)
    assert job.state.value == "FAILED", job
    assert "node-3" in job.reason and "node-4" in job.reason, job.reason
    assert job.ended - killed_at < 10, job.ended - killed_at
    for node in ("node-3", "node-4"):
        fed.start_node(node)
    fed.wait_alive(["node-3", "node-4"])
    fed.write_config(params(1))
    res = fed.client("-c", "start", "--resume", job_id, "--follow")
    assert res.returncode == 0 and f"job {job_id} SUCCESSFUL" in res.stdout, res.stdout + res.stderr + fed.logs()
