"""Two jobs at once on one federation (fed_conf max_concurrent_jobs 2), and a party of 2 DDP ranks.

Real processes and Redis. Jobs run horizontal_chatglm with OTP on the same tiny GLM and the same seeds
while overlapping in time; each must end SUCCESSFUL with adapters byte-identical to the same job run
alone afterwards (per-job mailboxes, pad streams, work dirs and output folders keep them apart). The
DDP test shares the federation to save a second set-up.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.integration.conftest import REPO, load_module, serve

pytestmark = pytest.mark.integration

_chatglm = load_module("xfed_tests_integration_chatglm", REPO / "tests" / "integration" / "test_chatglm.py")
TRAINERS = ["node-1", "node-2"]


@pytest.fixture(scope="module")
def cfed(tmp_path_factory):
    root = tmp_path_factory.mktemp("concurrent")
    with serve(root, trainers=list(TRAINERS), namespace="conc", interval=1.0) as fed:
        fed.write_config(fed_extra={"max_concurrent_jobs": 2})
        c = _chatglm.ChatglmFed(fed, root, list(TRAINERS))
        c.write(_chatglm.authoritative(_chatglm.LORA, _chatglm.OTP))
        fed.start_all()
        yield c


def _start(cfed) -> str:
    res = cfed.fed.client("-c", "start")
    assert res.returncode == 0, res.stderr + cfed.fed.logs()
    return res.stdout.split()[0]


def test_overlapping_jobs_succeed_with_the_adapters_of_a_job_run_alone(cfed):
    fed = cfed.fed
    first, second = _start(cfed), _start(cfed)
    assert (first, second) == ("1", "2")
    refused = fed.client("-c", "start")  # the federation's limit is two
    assert refused.returncode != 0 and "2 jobs are running (1, 2), max_concurrent_jobs is 2" in refused.stderr
    bare = fed.client("-c", "stop")  # (stopping one job of several by id: tests/scheduler, tests/client)
    assert bare.returncode != 0 and "say which one: -c stop --job_id N" in bare.stderr
    jobs = {j: fed.wait_job(j) for j in (first, second)}
    for j, job in jobs.items():
        assert job.state.value == "SUCCESSFUL", (j, job.reason, fed.logs())
    a, b = jobs[first], jobs[second]
    assert a.started < b.ended and b.started < a.ended  # they did run at the same time
    alone = _start(cfed)
    assert fed.wait_job(alone).state.value == "SUCCESSFUL", fed.logs()
    for node in [*TRAINERS, _chatglm.ASSIST]:
        ref = cfed.final(alone, node)
        for j in (first, second):
            got = cfed.final(j, node)
            assert sorted(got) == sorted(ref)
            for name in ref:
                assert np.array_equal(got[name], ref[name]), (j, node, name)
    status = fed.client("-c", "status", "--job_id", second, "--json")
    assert status.returncode == 0 and '"state": "SUCCESSFUL"' in status.stdout
    # every stage process has gone: each daemon advertises no job
    r, keys = fed.redis_client(), fed.keys()
    fed.wait_for(lambda: all(not r.hget(keys.node_info(n), "job") for n in fed.nodes), "daemons idle", timeout=30)


def test_a_party_training_as_two_ddp_ranks(cfed):
    """node-1 runs as a 2-rank gloo DDP group beside a 1-process node-2 (same federation: no second set-up).

    The mean differs from node-1's own update (node-2 contributes), so rank 1 ends equal to rank 0 only
    if rank 0 broadcast every round's mean; each rank saw half of node-1's data per epoch, so the group
    ran half the optimizer steps one process would."""
    import json

    from safetensors.numpy import load_file

    fed = cfed.fed
    cfed.write(_chatglm.authoritative(_chatglm.LORA, _chatglm.PLAIN))
    path = fed.config / "trainer_config_node-1.json"
    stages = json.loads(path.read_text())
    stages[0]["model_info"]["config"] = {"nproc_per_node": 2}
    stages[0]["train_info"]["train_params"]["trainer"]["per_device_train_batch_size"] = 2  # 8 examples: 2 steps
    path.write_text(json.dumps(stages))
    job = _start(cfed)
    assert fed.wait_job(job).state.value == "SUCCESSFUL", fed.logs()
    ranks = cfed.root / "work" / "node-1" / f"job-{job}" / "stage-0.0" / "ddp"
    rank1 = load_file(str(ranks / "rank-1-output" / "final" / "adapter_model.safetensors"))
    for node in [*TRAINERS, _chatglm.ASSIST]:
        final = cfed.final(job, node)
        assert sorted(final) == sorted(rank1)
        for name in final:
            assert np.array_equal(final[name], rank1[name]), (node, name)
    steps = {n: cfed.metrics(job, n)["total_steps"] for n in TRAINERS}
    examples = {n: cfed.metrics(job, n)["num_examples"] for n in TRAINERS}
    assert steps["node-2"] == -(-examples["node-2"] // 4)  # one process: every example, 4 a step
    assert steps["node-1"] == -(-examples["node-1"] // (2 * 2))  # two ranks, 2 each a step
    assert "trained through round" in (ranks / "rank-1.log").read_text()
