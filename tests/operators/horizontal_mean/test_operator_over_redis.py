"""horizontal_mean end to end in one process: 3 trainers + assist as threads, real Comm, real Redis, plain and otp."""
from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from xfed.broker.channels import Comm
from xfed.broker.jobrecord import JobState
from xfed.broker.jobstore import JobStore
from xfed.broker.keys import Keys
from xfed.errors import JobError
from xfed.node.context import StageContext
from xfed.operators.horizontal_mean import run

TRAINERS = ["node-1", "node-2", "node-3"]
ASSIST = "assist_trainer"
OTP = {"otp": {"key_bitlength": 64, "key_exchange": {"key_bitlength": 2048, "optimized": True},
               "csprng": {"name": "hmac_drbg", "method": "sha256"}}}


def run_federation(server, tmp_path: Path, root_params: dict, leaf_params: dict | None = None, namespace="hm"):
    keys = Keys(namespace)
    store = JobStore(server.client(), keys)
    job_id = store.create(TRAINERS + [ASSIST])
    store.transition(job_id, JobState.RUNNING, stage=0)
    reports: dict[str, list] = {n: [] for n in TRAINERS + [ASSIST]}
    results: dict[str, object] = {}

    def node(n: str) -> None:
        is_root = n == ASSIST
        params = root_params if is_root else (leaf_params or {})
        stage = SimpleNamespace(identity="assist_trainer" if is_root else "label_trainer",
                                train_info=SimpleNamespace(train_params=params),
                                output=SimpleNamespace(path=str(tmp_path / "out" / "[JOB_ID]" / "[NODE_ID]")))
        ctx = StageContext(job_id=job_id, stage_id=0, attempt=0, node_id=n, identity=stage.identity, stage=stage,
                           fed=SimpleNamespace(identities={}, trainer_ids=TRAINERS, assist_trainer_id=ASSIST,
                                               redis=SimpleNamespace(namespace="t")),
                           trainer_ids=TRAINERS, assist_id=ASSIST,
                           comm=Comm(server.client(), keys, job_id, 0, n, timeout=60), work_dir=tmp_path,
                           _report=lambda kind, data, n=n: reports[n].append((kind, data)))
        try:
            results[n] = run(ctx)
        except Exception as err:  # noqa: BLE001 - collected and asserted by the test
            results[n] = err

    threads = [threading.Thread(target=node, args=(n,)) for n in TRAINERS + [ASSIST]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    return job_id, results, reports


@pytest.mark.integration
@pytest.mark.parametrize("encryption", [{"plain": {}}, OTP], ids=["plain", "otp"])
def test_every_node_checks_the_weighted_mean(redis_server, tmp_path, encryption):
    root = {"rounds": 2, "dim": 1000, "seed": 3, "weighting": "index", "assist_contributes": True,
            "encryption": encryption}
    job_id, results, reports = run_federation(redis_server, tmp_path, root, {"rounds": 9})
    for n, res in results.items():
        assert isinstance(res, dict), f"{n}: {res!r}"
        assert res["rounds"] == 2 and res["contributors"] == 4 and res["max_abs_err"] < 1e-6
        assert res["encryption"] == next(iter(encryption))
    kinds = [k for k, _ in reports["node-1"]]
    assert kinds.count("metrics") == 2 and kinds.count("progress") == 2
    assert any(k == "warning" and "rounds" in d["message"] for k, d in reports["node-1"])  # assist's value won
    saved = json.loads((tmp_path / "out" / job_id / "node-2" / "horizontal_mean.json").read_text())
    assert [r["round"] for r in saved["rounds"]] == [0, 1]


@pytest.mark.integration
def test_a_wrong_tolerance_is_caught_as_a_job_error(redis_server, tmp_path):
    # a tolerance below float32 resolution cannot be met: every node must fail the job, not hang
    root = {"rounds": 1, "dim": 64, "tolerance": 1e-30, "timeout_s": 20}
    _, results, _ = run_federation(redis_server, tmp_path, root, namespace="hm2")
    assert all(isinstance(r, JobError) and "differs from the expected mean" in str(r) for r in results.values())
