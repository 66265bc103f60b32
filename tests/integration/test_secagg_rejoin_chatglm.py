"""horizontal_chatglm with dropout-tolerant secure aggregation: kill -9 a label trainer, restart it, it rejoins.

4 label trainers (threshold 3) + an aggregating assist trainer, real processes and Redis, the tiny GLM of
the other chatglm integration tests; one optimizer step per round, so the survivors' rounds go on while the
restarted node loads, asks for the plan and is admitted (docs/SECAGG.md §7).
"""
from __future__ import annotations

import json
import signal

import numpy as np
import pytest

from tests.integration.conftest import REPO, load_module, serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRAINERS = ["node-1", "node-2", "node-3", "node-4"]
ASSIST = "assist_trainer"
_tiny = load_module("xfed_tests_chatglm_conftest", REPO / "tests" / "operators" / "horizontal_chatglm" / "conftest.py")
_cg = load_module("xfed_tests_integration_chatglm", REPO / "tests" / "integration" / "test_chatglm.py")

# 8 examples, batch 2: 4 steps an epoch, 6 epochs, agg_steps 1 -> 24 rounds of one optimizer step each (a
# restart under load takes many rounds: the process imports torch, asks for the plan, loads, joins)
ROUNDS = 24
ENC = {"otp": {"key_bitlength": 64, "key_exchange": {"key_bitlength": 2048, "optimized": True},
               "csprng": {"name": "hmac_drbg", "method": "sha256"},
               "dropout": {"threshold": 3, "round_timeout_s": 5.0}}}


def params() -> dict:
    p = _cg.authoritative(_cg.LORA, ENC)
    p["aggregation"] = {"agg_steps": 1}
    p["trainer"].update(per_device_train_batch_size=2, num_train_epochs=6, lr_scheduler_type="linear")
    return p


@pytest.fixture(scope="module")
def rfed(tmp_path_factory):
    root = tmp_path_factory.mktemp("chatglm_rejoin")
    with serve(root, trainers=list(TRAINERS), namespace="cgrejoin", interval=1.0) as fed:
        fed.write_config()
        model = _tiny.build_tiny_glm(root / "tiny-glm", seed=0)
        data = root / "data"
        data.mkdir()
        out = str(root / "out" / "[JOB_ID]" / "[NODE_ID]")
        cfg = fed.config
        (cfg / f"trainer_config_{ASSIST}.json").write_text(json.dumps(_cg.stage(ASSIST, model, out, params(), None)))
        local = {"trainer": {"per_device_train_batch_size": 2, "no_cuda": True}}
        for n, skill in zip(TRAINERS, ["reverse", "upper", "copy", "reverse"], strict=True):
            trainset = _cg.write_party_data(data, n, skill, 8)
            (cfg / f"trainer_config_{n}.json").write_text(json.dumps(_cg.stage("label_trainer", model, out, local,
                                                                                 trainset)))
        fed.start_all()
        yield fed


def progress_round(fed, job_id: str, node: str) -> int:
    job = fed.store().require(job_id)
    return int((job.nodes.get(node).progress or {}).get("round", 0)) if node in job.nodes else 0


def test_killed_chatglm_trainer_restarts_rejoins_and_ends_on_the_same_adapter(rfed):
    from safetensors.numpy import load_file

    res = rfed.client("-c", "start")
    assert res.returncode == 0, res.stderr + rfed.logs()
    job_id = res.stdout.split()[0]
    rfed.wait_for(lambda: progress_round(rfed, job_id, "node-4") >= 1, "node-4 to finish round 1", timeout=120)
    child = rfed.child_pids(job_id).get("node-4")
    rfed.procs["node-4"].send_signal(signal.SIGKILL)
    if child:
        try:
            import os

            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
    rfed.procs["node-4"].wait(30)
    rfed.start_node("node-4")
    job = rfed.wait_job(job_id, timeout=240)
    assert job.state.value == "SUCCESSFUL", (job, rfed.logs())
    back = job.nodes["node-4"]
    assert back.state == "done" and "rejoined from round" in back.message, back
    out = rfed.root / "out" / job_id

    def metrics(node):
        return json.loads((out / node / "metrics.json").read_text())

    rows = metrics(ASSIST)["rounds"]
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
    assert rows[0]["contributors"] == TRAINERS
    without = [r["round"] for r in rows if r["contributors"] == TRAINERS[:3]]
    assert without, [r["contributors"] for r in rows]
    mine = metrics("node-4")
    first = mine["first_round"]
    assert mine["incarnation"] == 1 and without[0] < first <= ROUNDS, (first, without)
    back_in = [r["round"] for r in rows if r["round"] >= first and r["contributors"] == TRAINERS]
    assert back_in, [r["contributors"] for r in rows]  # the restarted node's update is in a later round's mean
    done = [r["round"] for r in mine["rounds"]]
    # the first incarnation's records are kept; the rejoiner ran exactly the rounds from its admission on
    earlier = [r for r in done if r < first]
    assert len(earlier) >= 1 and earlier == list(range(1, len(earlier) + 1)), done
    assert [r for r in done if r >= first] == list(range(first, ROUNDS + 1)), done
    steps = [r["step"] for r in mine["rounds"] if r["round"] >= first]
    assert steps == list(range(first, ROUNDS + 1)), steps  # one optimizer step a round, from the admission step on
    assert json.loads(job.extra["rejoin:0.0"]) == {"node-4": {"incarnation": 1, "admitted": first}}
    finals = {n: load_file(str(out / n / "final" / "adapter_model.safetensors")) for n in [*TRAINERS, ASSIST]}
    ref = finals[ASSIST]
    for node, tensors in finals.items():
        assert sorted(tensors) == sorted(ref), node
        for k in ref:
            assert np.array_equal(tensors[k], ref[k]), f"{node} {k} differs from {ASSIST}"
    # the rounds before the kill are still on disk from the first incarnation
    assert (out / "node-4" / "checkpoint-1").is_dir() and (out / "node-4" / f"checkpoint-{ROUNDS}").is_dir()
