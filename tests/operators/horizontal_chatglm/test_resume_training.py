"""Resuming the real HF Trainer from a round's resume state reproduces the uninterrupted run exactly.

LoRA with dropout, AdamW, linear schedule with warm-up, 2 epochs of 4 steps, 4 rounds (round 2 ends on
the epoch boundary); the stand-in aggregate scales the tensors so that it is not the identity.
"""
import shutil

import numpy as np
import pytest
import torch

from xfed.aggregation.privacy import DpParams, Privatizer
from xfed.operators.horizontal_chatglm import resume
from xfed.operators.horizontal_chatglm.adapter_state import extract_trainable, load_trainable
from xfed.operators.horizontal_chatglm.config import Peft
from xfed.operators.horizontal_chatglm.fedprox import ProximalCallback
from xfed.operators.horizontal_chatglm.metrics import MetricsLog
from xfed.operators.horizontal_chatglm.peft_setup import apply_peft
from xfed.operators.horizontal_chatglm.rounds import FederatedCallback, RoundRunner
from xfed.operators.horizontal_chatglm.schedule import party_schedule
from xfed.operators.horizontal_chatglm.training import (
    build_trainer,
    count_optimizer_steps,
    training_arguments,
)

from ._helpers import collate, features

ROUNDS = 4


class _Ctx:
    node_id, attempt = "node-1", 0

    def report(self, kind, data):
        pass

    def should_stop(self):
        return False


def _aggregate(_round, tensors, _weight):
    return {k: v * np.float32(0.9) for k, v in tensors.items()}


LORA = Peft.model_validate({"LORA": {"r": 2, "target_modules": ["q_proj", "v_proj"], "lora_alpha": 8, "lora_dropout": 0.1}})
PREFIX = Peft.model_validate({"PREFIX_TUNING": {"pre_seq_len": 3, "prefix_projection": True, "prefix_hidden_size": 8}})


def _party(tiny_glm, tmp_path, name, peft=None, private=False, seed=None):
    """private: FedProx (mu 0.5) and client-level DP (otp share of 2 parties) as the operator wires them."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_glm))
    peft_model = apply_peft(model, peft or LORA)
    args = training_arguments({"per_device_train_batch_size": 2, "num_train_epochs": 2, "learning_rate": 1e-2,
                               "lr_scheduler_type": "linear", "warmup_steps": 2, "no_cuda": True, "seed": 3},
                              tmp_path / name / "trainer")
    trainer = build_trainer(peft_model, args, features(8), collate, callbacks=[])
    out = tmp_path / name / "out"
    schedule = party_schedule(ROUNDS, count_optimizer_steps(trainer))
    privatizer, anchors = None, []
    if private:
        proximal = ProximalCallback(peft_model, 0.5)
        trainer.add_callback(proximal)
        privatizer = Privatizer(DpParams(epsilon=50.0, clip_norm=0.05), ROUNDS, "otp", 2, seed=seed)
        anchors = [proximal, privatizer]
    runner = RoundRunner(_Ctx(), peft_model, _aggregate, None, schedule, 1.0, out,
                         MetricsLog(out / "metrics.json", {}), privatizer=privatizer, anchors=anchors,
                         after_checkpoint=lambda k: resume.save_round_state(
                             out, k, ROUNDS, extract_trainable(peft_model), trainer, node="node-1", attempt=0,
                             dp_seed=privatizer.seed if privatizer else None))
    callback = FederatedCallback(runner)
    trainer.add_callback(callback)
    for anchor in anchors:
        anchor.set_anchor(extract_trainable(peft_model))
    return trainer, callback, peft_model, out


@pytest.fixture(scope="module")
def reference(tiny_glm, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume-ref")
    trainer, callback, peft_model, out = _party(tiny_glm, tmp, "ref")
    trainer.train()
    assert callback.rounds_done == ROUNDS and resume.last_complete_round(out) == ROUNDS
    return extract_trainable(peft_model), out


def _resumed(tiny_glm, tmp_path, ref_out, k, name="resumed", peft=None):
    trainer, callback, peft_model, out = _party(tiny_glm, tmp_path, name, peft)
    shutil.copytree(ref_out, out, dirs_exist_ok=True)  # what the party had on disk when it was killed
    load_trainable(peft_model, resume.restore(_Ctx(), out, k, ROUNDS), source=f"round {k}")
    callback.rounds_done = k
    # a new process has drawn other random numbers by now (the checkpoint's RNG state replaces them); its
    # seed history is the same (Trainer() seeds with args.seed, which also seeds the data sampler)
    torch.rand(1234)
    trainer.train(resume_from_checkpoint=resume.trainer_checkpoint(_Ctx(), out, k, trainer))
    assert callback.rounds_done == ROUNDS
    return extract_trainable(peft_model)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_resume_after_round_k_equals_the_uninterrupted_run(tiny_glm, tmp_path, reference, k):
    ref, ref_out = reference
    got = _resumed(tiny_glm, tmp_path, ref_out, k)
    for name in ref:
        assert np.max(np.abs(got[name] - ref[name])) <= 1e-6, name


def test_without_the_optimizer_state_it_would_differ(tiny_glm, tmp_path, reference):
    """The equality above is not luck: a fresh optimizer (moments lost) gives another adapter."""
    ref, ref_out = reference
    damaged = tmp_path / "damaged"
    shutil.copytree(ref_out, damaged)
    (damaged / "checkpoint-1" / resume.RESUME_DIR / "optimizer.pt").unlink()  # the Trainer skips it silently
    got = _resumed(tiny_glm, tmp_path, damaged, 1)
    assert max(float(np.max(np.abs(got[n] - ref[n]))) for n in ref) > 1e-4


def test_projected_prefix_resumes_exactly(tiny_glm, tmp_path):
    """P-tuning v2 with a projection: the embedding + MLP (what trains) are restored, not the projected form."""
    trainer, _callback, peft_model, out = _party(tiny_glm, tmp_path, "ref", PREFIX)
    trainer.train()
    ref = extract_trainable(peft_model)
    assert any("prompt_encoder" in name for name in ref)
    got = _resumed(tiny_glm, tmp_path, out, 2, peft=PREFIX)
    for name in ref:
        assert np.max(np.abs(got[name] - ref[name])) <= 1e-6, name


def test_a_rounds_metrics_record_is_on_disk_before_its_resume_state(tiny_glm, tmp_path):
    """state.json marks a round complete: a kill right after it must not lose the round's metrics record."""
    import json

    trainer, callback, _peft_model, out = _party(tiny_glm, tmp_path, "order")
    save_state, seen = callback.runner.after_checkpoint, []

    def checked(k):
        recorded = json.loads((out / "metrics.json").read_text())["rounds"]
        seen.append((k, [r["round"] for r in recorded]))
        save_state(k)

    callback.runner.after_checkpoint = checked
    trainer.train()
    assert seen == [(k, list(range(1, k + 1))) for k in range(1, ROUNDS + 1)]


def test_fedprox_and_dp_resume_exactly_with_the_saved_noise_seed(tiny_glm, tmp_path):
    """A resumed DP party draws the same noise for a re-run round (seed from the resume state) and FedProx
    restarts from the restored aggregate: the run equals the uninterrupted one; the noise is really there."""
    import json

    trainer, _callback, peft_model, out = _party(tiny_glm, tmp_path, "ref", private=True)
    trainer.train()
    ref = extract_trainable(peft_model)
    seed = resume.dp_seed(out, 2)
    assert seed is not None and seed == _callback.runner.privatizer.seed
    records = json.loads((out / "metrics.json").read_text())["rounds"]
    spent = [r["dp_epsilon"] for r in records]
    assert spent == sorted(spent) and spent[-1] == pytest.approx(50.0, rel=1e-3)
    assert all(r["dp_update_norm"] > 0 for r in records)

    trainer, callback, peft_model, out2 = _party(tiny_glm, tmp_path, "resumed", private=True, seed=resume.dp_seed(out, 2))
    shutil.copytree(out, out2, dirs_exist_ok=True)
    restored = resume.restore(_Ctx(), out2, 2, ROUNDS)
    load_trainable(peft_model, restored, source="round 2")
    for anchor in callback.runner.anchors:
        anchor.set_anchor(restored)
    callback.rounds_done = 2
    trainer.train(resume_from_checkpoint=resume.trainer_checkpoint(_Ctx(), out2, 2, trainer))
    got = extract_trainable(peft_model)
    for name in ref:
        assert np.max(np.abs(got[name] - ref[name])) <= 1e-6, name

    trainer, callback, peft_model, out3 = _party(tiny_glm, tmp_path, "other-seed", private=True)
    trainer.train()
    other = extract_trainable(peft_model)
    assert max(float(np.max(np.abs(other[n] - ref[n]))) for n in ref) > 1e-4  # a fresh seed: other noise
