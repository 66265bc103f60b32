"""horizontal_chatglm end to end: scheduler + assist trainer + 3 (then 2) label trainers as real processes, real Redis.

One federation per test class; each test runs one or two jobs on a tiny GLM (random weights, character
tokenizer) with a handful of optimizer steps, and checks the adapters every party saved.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.integration.conftest import REPO, load_module, serve

pytestmark = pytest.mark.integration

TRAINERS = ["node-1", "node-2", "node-3"]
ASSIST = "assist_trainer"

_tiny = load_module("xfed_tests_chatglm_conftest", REPO / "tests" / "operators" / "horizontal_chatglm" / "conftest.py")

WORDS = ["abc", "hello", "cab", "dog", "zebra", "xyz", "moon", "star", "tree", "blue", "fish", "rain"]


def write_party_data(folder: Path, node: str, skill: str, n: int) -> Path:
    """A small XFL QA file: `skill word` -> answer; parties get different skills (non-IID)."""
    fn = {"reverse": lambda w: w[::-1], "upper": lambda w: "".join(sorted(w)), "copy": lambda w: w}[skill]
    instances = [{"input": f"{skill} {WORDS[i % len(WORDS)]}", "output": fn(WORDS[i % len(WORDS)])} for i in range(n)]
    path = folder / f"{node}.json"
    path.write_text(json.dumps({"instruction": "task", "instances": instances}, ensure_ascii=False))
    return path


def stage(identity: str, model: Path, out: str, params: dict, trainset: Path | None, valset: Path | None = None):
    s = {"identity": identity, "model_info": {"name": "horizontal_chatglm"},
         "input": {"pretrained_model": {"path": str(model)}}, "output": {"path": out},
         "train_info": {"train_params": params}}
    if trainset is not None:
        s["input"]["trainset"] = [{"type": "QA", "path": str(trainset)}]
    if valset is not None:
        s["input"]["valset"] = [{"type": "QA", "path": str(valset)}]
    return [s]


def authoritative(peft: dict, encryption: dict, seed: int = 7) -> dict:
    return {
        "aggregation": {"agg_steps": 0.5},
        "encryption": encryption,
        "peft": peft,
        "trainer": {"per_device_train_batch_size": 4, "learning_rate": 1e-2, "num_train_epochs": 1,
                    "lr_scheduler_type": "constant", "seed": seed, "no_cuda": True},
        "dataset": {"max_src_length": 24, "max_dst_length": 8, "prompt_pattern": "{}：\n问：{}\n答："},
    }


OTP = {"otp": {"key_bitlength": 64, "key_exchange": {"key_bitlength": 2048, "optimized": True},
               "csprng": {"name": "hmac_drbg", "method": "sha256"}}}
PLAIN = {"plain": {}}
LORA = {"LORA": {"r": 4, "target_modules": "auto", "lora_alpha": 8, "lora_dropout": 0.0}}


class ChatglmFed:
    """The shared Federation plus horizontal_chatglm configs and output readers."""

    def __init__(self, fed, root: Path, trainers: list[str]):
        self.fed, self.root, self.trainers = fed, root, trainers
        self.model = _tiny.build_tiny_glm(root / "tiny-glm", seed=0)
        self.data = root / "data"
        self.data.mkdir()
        skills = dict(zip(TRAINERS, ["reverse", "upper", "copy"], strict=True))
        self.trainsets = {n: write_party_data(self.data, n, skills[n], 8 + 4 * i) for i, n in enumerate(trainers)}
        self.trainsets[ASSIST] = write_party_data(self.data, ASSIST, "copy", 8)
        self.valset = write_party_data(self.data, "val", "reverse", 4)

    def write(self, params: dict, *, assist_data: bool = False, models: dict[str, Path] | None = None,
              valsets: bool = False, own: dict[str, dict] | None = None) -> None:
        """own: a label trainer's own train_params in place of the usual local keys."""
        out = str(self.root / "out" / "[JOB_ID]" / "[NODE_ID]")
        cfg = self.fed.config
        local = {"trainer": {"per_device_train_batch_size": 4, "no_cuda": True}}
        (cfg / f"trainer_config_{ASSIST}.json").write_text(json.dumps(stage(
            "assist_trainer", (models or {}).get(ASSIST, self.model), out, params,
            self.trainsets[ASSIST] if assist_data else None)))
        for n in self.trainers:
            (cfg / f"trainer_config_{n}.json").write_text(json.dumps(stage(
                "label_trainer", (models or {}).get(n, self.model), out, (own or {}).get(n, local), self.trainsets[n],
                self.valset if valsets else None)))

    def run(self, timeout: float = 600):
        res = self.fed.client("-c", "start")
        assert res.returncode == 0, res.stderr + self.fed.logs()
        job_id = res.stdout.split()[0]
        return job_id, self.fed.wait_job(job_id, timeout=timeout)

    def final(self, job_id: str, node: str) -> dict[str, np.ndarray]:
        from safetensors.numpy import load_file

        return load_file(str(self.root / "out" / job_id / node / "final" / "adapter_model.safetensors"))

    def metrics(self, job_id: str, node: str) -> dict:
        return json.loads((self.root / "out" / job_id / node / "metrics.json").read_text())


def _federation(tmp_path_factory, trainers: list[str]):
    root = tmp_path_factory.mktemp("chatglm")
    with serve(root, trainers=list(trainers), namespace="chatglm", interval=1.0) as fed:
        fed.write_config()  # fed_conf.json (+ placeholder stage files, replaced per test)
        c = ChatglmFed(fed, root, list(trainers))
        fed.start_all()
        yield c


@pytest.fixture(scope="class")
def cfed(tmp_path_factory):
    yield from _federation(tmp_path_factory, TRAINERS)


@pytest.fixture(scope="class")
def cfed2(tmp_path_factory):
    yield from _federation(tmp_path_factory, TRAINERS[:2])


def assert_all_equal(adapters: dict[str, dict[str, np.ndarray]], atol: float = 0.0) -> None:
    ref_node, ref = next(iter(adapters.items()))
    for node, tensors in adapters.items():
        assert sorted(tensors) == sorted(ref), node
        for k in ref:
            assert np.allclose(tensors[k], ref[k], atol=atol, rtol=0), f"{node} {k} differs from {ref_node}"


class TestThreeLabelTrainers:
    """assist trainer + node-1..3: LoRA plain/otp, prefix with projection, preflight."""

    def test_lora_otp_final_adapter_equals_plain_and_every_party_holds_it(self, cfed):
        cfed.write(authoritative(LORA, PLAIN), valsets=True)
        plain_id, job = cfed.run()
        assert job.state.value == "SUCCESSFUL", job
        cfed.write(authoritative(LORA, OTP), valsets=True)
        otp_id, job = cfed.run()
        assert job.state.value == "SUCCESSFUL", job

        nodes = [ASSIST, *TRAINERS]
        plain = {n: cfed.final(plain_id, n) for n in nodes}
        otp = {n: cfed.final(otp_id, n) for n in nodes}
        assert_all_equal(plain)  # every party ends with the same aggregated adapter
        assert_all_equal(otp)
        trained = plain[ASSIST]
        assert any(np.abs(v).max() > 0 for k, v in trained.items() if "lora_B" in k)  # B starts at 0: it trained
        for k in trained:
            assert np.max(np.abs(otp[ASSIST][k] - trained[k])) <= 1e-6, k

        m = cfed.metrics(otp_id, "node-1")
        assert [r["round"] for r in m["rounds"]] == [1, 2] and m["rounds"][-1]["step"] == m["total_steps"]
        last = m["rounds"][-1]
        assert {"train_loss", "eval_loss", "exact_match", "rouge_l", "mask_ms", "wait_ms", "bytes_sent",
                "peak_rss_mb", "eta_s"} <= set(last)
        assert last["bytes_sent"] > 0 and last["mask_ms"] > 0
        assert (cfed.root / "out" / otp_id / "node-2" / "checkpoint-1" / "adapter_config.json").is_file()
        # different data sizes (8, 12, 16 examples): different step counts, the same two rounds
        steps = {n: cfed.metrics(otp_id, n)["total_steps"] for n in TRAINERS}
        assert steps == {"node-1": 2, "node-2": 3, "node-3": 4}

    def test_saved_adapter_loads_with_plain_peft_and_generates(self, cfed):
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        out = sorted((cfed.root / "out").glob("*/node-3/final"))
        assert out, "run the LoRA test first"
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(cfed.model)), str(out[-1])).eval()
        tok = AutoTokenizer.from_pretrained(str(cfed.model))
        ids = tok("task：\n问：reverse abc\n答：", return_tensors="pt")
        generated = model.generate(**ids, max_new_tokens=4, do_sample=False)
        assert generated.shape[1] == ids["input_ids"].shape[1] + 4

    def test_prefix_tuning_with_projection_and_a_training_assist_trainer(self, cfed):
        peft = {"PREFIX_TUNING": {"pre_seq_len": 4, "prefix_projection": True, "prefix_hidden_size": 16}}
        cfed.write(authoritative(peft, OTP), assist_data=True)
        job_id, job = cfed.run()
        assert job.state.value == "SUCCESSFUL", job
        finals = {n: cfed.final(job_id, n) for n in [ASSIST, *TRAINERS]}
        assert_all_equal(finals, atol=1e-6)
        # peft's own file holds the projected prefix; ours beside it holds embedding + MLP for resuming
        folder = cfed.root / "out" / job_id / ASSIST / "final"
        assert (folder / "prefix_encoder_trainable.safetensors").is_file()
        assert cfed.metrics(job_id, ASSIST)["num_examples"] == 8  # the assist trainer trained on its own data

    def test_different_base_model_or_tokenizer_fails_preflight_naming_the_party(self, cfed):
        import shutil

        other_model = _tiny.build_tiny_glm(cfed.root / "other-glm", seed=1)
        other_tok = cfed.root / "other-tokenizer"  # same weights, two vocabulary ids swapped
        shutil.copytree(cfed.model, other_tok)
        tok = json.loads((other_tok / "tokenizer.json").read_text())
        vocab = tok["model"]["vocab"]
        vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
        (other_tok / "tokenizer.json").write_text(json.dumps(tok))
        cfed.write(authoritative(LORA, PLAIN), models={"node-2": other_model, "node-3": other_tok})
        job_id, job = cfed.run()
        assert job.state.value == "FAILED", job
        reason = job.reason
        assert "preflight" in reason and "node-1 differs" not in reason, reason
        assert "node-2 differs from assist_trainer in base_model" in reason, reason
        assert "node-3 differs from assist_trainer in tokenizer" in reason, reason
        assert "\n" not in reason
        assert not (cfed.root / "out" / job_id / "node-1" / "checkpoint-1").exists()  # nobody trained


    def test_a_label_trainers_unreadable_own_params_fail_the_job_naming_it_before_anyone_trains(self, cfed):
        bad = {"trainer": {"per_device_train_batch_size": "four", "no_cuda": True}}
        cfed.write(authoritative(LORA, PLAIN), own={"node-3": bad})
        job_id, job = cfed.run()
        assert job.state.value == "FAILED", job
        assert job.reason.startswith("node-3: train_params.trainer.per_device_train_batch_size: expected int"), job
        assert "\n" not in job.reason
        assert not (cfed.root / "out" / job_id / "node-1" / "checkpoint-1").exists()  # nobody trained


class TestTwoLabelTrainers:
    """assist trainer (aggregating only) + node-1, node-2: P-tuning v2 without projection, plain."""

    def test_prefix_tuning_without_projection(self, cfed2):
        cfed2.write(authoritative({"PREFIX_TUNING": {"pre_seq_len": 4, "prefix_projection": False}}, PLAIN))
        job_id, job = cfed2.run()
        assert job.state.value == "SUCCESSFUL", job
        finals = {n: cfed2.final(job_id, n) for n in [ASSIST, "node-1", "node-2"]}
        assert_all_equal(finals)
        (name, prefix), = finals[ASSIST].items()
        assert prefix.shape[0] == 4  # pre_seq_len virtual tokens
        assert cfed2.metrics(job_id, ASSIST)["num_examples"] == 0  # aggregation only
        rounds = cfed2.metrics(job_id, "node-2")["rounds"]
        assert len(rounds) == 2 and all(r["train_loss"] > 0 for r in rounds)
