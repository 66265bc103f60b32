"""Fault tolerance with real processes: kill -9 a trainer then `--resume`, a Redis outage, a scheduler restart.

One federation (real /usr/bin/redis-server with an fsync'd AOF, scheduler, assist trainer, two label
trainers as `python xfed.py` subprocesses) runs horizontal_chatglm on a tiny GLM: LoRA with dropout,
AdamW, a linear LR schedule with warm-up, two epochs, otp masking, four rounds of two steps each, and
FedAdam on the server (so "resumes exactly" includes the server optimizer's moments); the last test
adds client-level DP.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from tests.integration.conftest import REPO, load_module, serve

pytestmark = pytest.mark.integration

TRAINERS = ["node-1", "node-2"]
ASSIST = "assist_trainer"
NODES = [ASSIST, *TRAINERS]
ROUNDS = 4

_tiny = load_module("xfed_tests_chatglm_conftest", REPO / "tests" / "operators" / "horizontal_chatglm" / "conftest.py")

WORDS = ["abc", "hello", "cab", "dog", "zebra", "xyz", "moon", "star"]
PARAMS = {
    "aggregation": {"agg_steps": 0.25, "strategy": {"fedadam": {"server_lr": 0.02}}},
    "encryption": {"otp": {"key_bitlength": 64, "key_exchange": {"key_bitlength": 2048, "optimized": True},
                           "csprng": {"name": "hmac_drbg", "method": "sha256"}}},
    "peft": {"LORA": {"r": 4, "target_modules": "auto", "lora_alpha": 8, "lora_dropout": 0.1}},
    "trainer": {"per_device_train_batch_size": 2, "learning_rate": 1e-2, "num_train_epochs": 2,
                "lr_scheduler_type": "linear", "warmup_steps": 2, "seed": 3, "no_cuda": True},
    "dataset": {"max_src_length": 24, "max_dst_length": 8, "prompt_pattern": "{}：\n问：{}\n答："},
}


def _party_data(folder: Path, node: str, skill: str) -> Path:
    fn = {"reverse": lambda w: w[::-1], "copy": lambda w: w}[skill]
    instances = [{"input": f"{skill} {w}", "output": fn(w)} for w in WORDS]
    path = folder / f"{node}.json"
    path.write_text(json.dumps({"instruction": "task", "instances": instances}))
    return path


class Harness:
    def __init__(self, fed, srv, root: Path):
        self.fed, self.srv, self.root = fed, srv, root
        model = _tiny.build_tiny_glm(root / "tiny-glm", seed=0)
        data = root / "data"
        data.mkdir()
        out = str(root / "out" / "[JOB_ID]" / "[NODE_ID]")
        for node, skill in (("node-1", "reverse"), ("node-2", "copy")):
            trainset = _party_data(data, node, skill)
            (fed.config / f"trainer_config_{node}.json").write_text(json.dumps([{
                "identity": "label_trainer", "model_info": {"name": "horizontal_chatglm"},
                "input": {"pretrained_model": {"path": str(model)}, "trainset": [{"type": "QA", "path": str(trainset)}]},
                "output": {"path": out}, "train_info": {"train_params": {"trainer": {"no_cuda": True}}}}]))
        (fed.config / f"trainer_config_{ASSIST}.json").write_text(json.dumps([{
            "identity": "assist_trainer", "model_info": {"name": "horizontal_chatglm"},
            "input": {"pretrained_model": {"path": str(model)}}, "output": {"path": out},
            "train_info": {"train_params": PARAMS}}]))

    def start(self, *extra: str) -> str:
        res = self.fed.client("-c", "start", *extra)
        assert res.returncode == 0, res.stdout + res.stderr + self.fed.logs()
        return res.stdout.split()[0] if not extra else extra[-1]

    def out(self, job_id: str, node: str) -> Path:
        return self.root / "out" / job_id / node

    def final(self, job_id: str, node: str) -> dict[str, np.ndarray]:
        from safetensors.numpy import load_file

        return load_file(str(self.out(job_id, node) / "final" / "adapter_model.safetensors"))

    def round_done(self, job_id: str, node: str, k: int) -> bool:
        """Round k's resume state is complete (what a resume continues from; older ones get pruned)."""
        return (self.out(job_id, node) / f"checkpoint-{k}" / "xfed_resume" / "state.json").is_file()

    def last_round(self, job_id: str, node: str) -> int:
        """The newest round with a complete resume state: a round's last write (its metrics record comes before)."""
        return max((k for k in range(1, ROUNDS + 1) if self.round_done(job_id, node, k)), default=0)

    def wait_round(self, job_id: str, node: str, k: int, timeout: float = 300) -> None:
        """Until the node is through round k (>= k: older resume states are pruned)."""
        self.fed.wait_for(lambda: self.last_round(job_id, node) >= k, f"{node} round {k} of job {job_id}",
                          timeout=timeout)

    def newest_state(self, job_id: str, node: str, timeout: float = 300) -> dict:
        """The node's newest complete resume state, waiting (bounded) until it has one. Waits on the very
        file it returns: a party is up to a round behind another, and a state can be pruned between
        finding and reading it (then the next newest is read)."""
        def read() -> dict | None:
            k = self.last_round(job_id, node)
            path = self.out(job_id, node) / f"checkpoint-{k}" / "xfed_resume" / "state.json"
            try:
                return json.loads(path.read_text()) if k else None
            except FileNotFoundError:
                return None

        return self.fed.wait_for(read, f"a resume state of {node} in job {job_id}", timeout=timeout)

    def child_pid(self, job_id: str, node: str) -> int:
        return self.fed.wait_for(lambda: self.fed.child_pids(job_id).get(node), f"{node}'s stage pid")


@pytest.fixture(scope="module")
def h(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault")
    # an fsync'd append-only file: a Redis killed with -9 comes back with every acknowledged write
    with serve(root, redis_args=["--appendonly", "yes", "--appendfsync", "always"], trainers=list(TRAINERS),
               namespace="fault", interval=1.0) as fed:
        fed.write_config()
        harness = Harness(fed, fed.redis, root)
        fed.start_all()
        yield harness


@pytest.fixture(scope="module")
def reference(h):
    """An uninterrupted run of the same job: its final adapter is what every faulty run must reproduce."""
    job_id = h.start()
    job = h.fed.wait_job(job_id)
    assert job.state.value == "SUCCESSFUL", job
    return h.final(job_id, ASSIST)


def assert_same_adapter(h, job_id: str, ref: dict[str, np.ndarray], atol: float) -> None:
    for node in NODES:
        got = h.final(job_id, node)
        assert sorted(got) == sorted(ref), node
        worst = max(float(np.max(np.abs(got[k] - ref[k]))) for k in ref)
        assert worst <= atol, f"{node}: final adapter differs from the uninterrupted run by {worst}"


def test_killed_trainer_fails_the_job_and_resume_reproduces_an_uninterrupted_run(h, reference):
    assert any(np.abs(v).max() > 0 for k, v in reference.items() if "lora_B" in k)  # it trained
    job_id = h.start()
    pid = h.child_pid(job_id, "node-1")
    h.wait_round(job_id, "node-1", 1)
    # Hold node-1 once it is through round 1, then kill it the hard way. It may have gone on a round
    # before the SIGSTOP lands. Having finished round r, it may already have uploaded
    # its round r+1 share, so the others may still finish round r+1; nobody can finish round r+2.
    os.kill(pid, signal.SIGSTOP)
    node1_rounds = h.last_round(job_id, "node-1")
    os.kill(pid, signal.SIGKILL)
    job = h.fed.wait_job(job_id)
    assert job.state.value == "FAILED", job
    assert job.node == "node-1" and "node-1" in job.reason, job
    assert 1 <= node1_rounds < ROUNDS and h.last_round(job_id, "node-1") == node1_rounds
    if node1_rounds + 2 <= ROUNDS:
        assert not any(h.round_done(job_id, n, node1_rounds + 2) for n in NODES)

    h.start("--resume", job_id)
    job = h.fed.wait_job(job_id)
    assert job.state.value == "SUCCESSFUL", job
    assert job.attempt == 1
    assert_same_adapter(h, job_id, reference, atol=1e-5)
    metrics = json.loads((h.out(job_id, "node-1") / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3, 4]  # the rounds before the kill are kept from attempt 0
    state = json.loads((h.out(job_id, "node-2") / "checkpoint-4" / "xfed_resume" / "state.json").read_text())
    assert state["attempt"] == 1 and state["step"] == 8
    # the assist trainer resumed FedAdam's moments (the equality above would fail with fresh ones)
    assist_state = json.loads((h.out(job_id, ASSIST) / "checkpoint-4" / "xfed_resume" / "state.json").read_text())
    assert assist_state["strategy"] == {"name": "fedadam", "tensors": 2 * len(reference)}
    status = h.fed.client("-c", "status", job_id, "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["attempt"] == 1
    [first] = info["attempts"]  # how attempt 0 ended stays on record
    assert first["attempt"] == 0 and first["state"] == "FAILED" and first["node"] == "node-1"
    text = h.fed.client("-c", "status", job_id).stdout
    assert "attempt 0" in text and "FAILED" in text and "SUCCESSFUL" in text


def test_redis_down_10_s_then_scheduler_killed_mid_job_the_job_completes_unchanged(h, reference):
    """One job takes both hits (a job costs ~20 s of set-up here): Redis in round 2, the scheduler in round 3."""
    job_id = h.start()
    h.wait_round(job_id, ASSIST, 1)
    h.srv.proc.kill()  # SIGKILL by pid: no goodbye, the AOF has every acknowledged write
    h.srv.proc.wait(timeout=30)
    time.sleep(10)
    h.srv.start()
    r = h.srv.client()
    assert r.hget(h.fed.keys().job(job_id), "state") == b"RUNNING"  # the outage did fall mid-job

    h.wait_round(job_id, "node-2", 2)
    pid = h.child_pid(job_id, "node-2")
    os.kill(pid, signal.SIGSTOP)  # hold the job before its end while the scheduler is away
    try:
        # node-2 cannot finish the job while stopped (the assist may still finish node-2's next round)
        assert h.last_round(job_id, "node-2") < ROUNDS
        assert h.fed.store().require(job_id).state.value == "RUNNING"
        h.fed.stop("scheduler", signal.SIGKILL)
        h.fed.start_scheduler()  # waits out the dead scheduler's heartbeat, then re-attaches
        h.fed.wait_for(lambda: f"re-attached to job {job_id}" in (h.root / "scheduler.log").read_text(),
                       "the restarted scheduler to re-attach")
    finally:
        os.kill(pid, signal.SIGCONT)
    job = h.fed.wait_job(job_id)
    assert job.state.value == "SUCCESSFUL", job
    assert job.attempt == 0
    assert_same_adapter(h, job_id, reference, atol=1e-5)


def test_dp_otp_job_resumes_with_its_noise_seed_and_accounts_every_round_once(h, reference):
    """Client-level DP under otp: killed after round 1 and resumed, the job succeeds; each party's noise
    seed survives the resume (re-run rounds re-release the same noise: tests/operators/.../
    test_resume_training.py shows that makes the resumed run equal the uninterrupted one) and the spent
    epsilon grows round by round to the job's budget."""
    params = json.loads(json.dumps(PARAMS))
    params["aggregation"].update(weighting="uniform", dp={"epsilon": 8.0, "delta": 1e-5, "clip_norm": 0.05})
    config = h.fed.config / f"trainer_config_{ASSIST}.json"
    stage = json.loads(config.read_text())
    stage[0]["train_info"]["train_params"] = params
    config.write_text(json.dumps(stage))
    started: dict[str, str] = {}

    def start() -> bool:  # after the previous test's Redis outage a daemon's heartbeat may lag a moment
        res = h.fed.client("-c", "start")
        if res.returncode == 0:
            started["job"] = res.stdout.split()[0]
            return True
        assert "not alive" in res.stdout + res.stderr, res.stdout + res.stderr
        return False

    h.fed.wait_for(start, "every node alive to start the DP job", timeout=60)
    job_id = started["job"]
    pid = h.child_pid(job_id, "node-1")
    h.wait_round(job_id, "node-1", 1)
    # Hold node-1 (so the job cannot end before the kill); node-2 is at most a round behind it, so it
    # completes round 1 too. The seed is the same in every round's state: read each party's newest
    # (waiting for node-2's: checkpoint-1 of a party is not there yet when node-1's is, and is pruned later).
    os.kill(pid, signal.SIGSTOP)
    seeds = {n: h.newest_state(job_id, n)["dp_seed"] for n in TRAINERS}
    assert len(set(seeds.values())) == 2  # each party its own secret seed
    os.kill(pid, signal.SIGKILL)
    assert h.fed.wait_job(job_id).state.value == "FAILED"
    h.start("--resume", job_id)
    job = h.fed.wait_job(job_id)
    assert job.state.value == "SUCCESSFUL", job
    assert job.attempt == 1
    for n in TRAINERS:
        state = json.loads((h.out(job_id, n) / "checkpoint-4" / "xfed_resume" / "state.json").read_text())
        assert state["attempt"] == 1 and state["dp_seed"] == seeds[n]
        metrics = json.loads((h.out(job_id, n) / "metrics.json").read_text())
        spent = [r["dp_epsilon"] for r in metrics["rounds"]]
        assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3, 4]
        assert spent == sorted(spent) and spent[0] > 0 and spent[-1] == pytest.approx(8.0, rel=1e-3)
        assert metrics["dp"]["encryption"] == "otp" and metrics["dp"]["party_noise_std"] == pytest.approx(
            metrics["dp"]["noise_multiplier"] * 0.05 / 2 ** 0.5)
    final = h.final(job_id, ASSIST)
    assert max(float(np.max(np.abs(final[k] - reference[k]))) for k in reference) > 1e-3  # clipped + noised
    info = json.loads(h.fed.client("-c", "status", job_id, "--json").stdout)
    progress = info["nodes"]["node-1"]["progress"]
    assert progress["dp_epsilon"] == pytest.approx(8.0, rel=1e-3) and progress["dp_delta"] == 1e-5
