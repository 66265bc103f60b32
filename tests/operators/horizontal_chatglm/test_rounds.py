"""The TrainerCallback with the real HF Trainer: rounds at the schedule's steps, aggregate loaded in place."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from xfed.errors import JobError
from xfed.operators.horizontal_chatglm.adapter_state import extract_trainable
from xfed.operators.horizontal_chatglm.config import Peft
from xfed.operators.horizontal_chatglm.metrics import MetricsLog
from xfed.operators.horizontal_chatglm.peft_setup import apply_peft
from xfed.operators.horizontal_chatglm.rounds import Evaluator, FederatedCallback, RoundRunner
from xfed.operators.horizontal_chatglm.schedule import party_schedule
from xfed.operators.horizontal_chatglm.training import (
    build_trainer,
    count_optimizer_steps,
    training_arguments,
)

from ._helpers import collate, features


class _Ctx:
    def __init__(self, stop_after=None):
        self.node_id = "node-1"
        self.events = []
        self.calls = 0
        self.stop_after = stop_after

    def report(self, kind, data):
        self.events.append((kind, data))

    def should_stop(self):
        self.calls += 1
        return self.stop_after is not None and self.calls > self.stop_after


def _setup(tiny_glm, tmp_path, ctx, aggregate, evaluator=None, rounds=3):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_glm))
    peft_model = apply_peft(model, Peft.model_validate({"LORA": {"r": 2, "target_modules": ["q_proj", "v_proj"], "lora_alpha": 8,
                                                              "lora_dropout": 0.0}}))
    args = training_arguments({"per_device_train_batch_size": 2, "num_train_epochs": 1, "learning_rate": 1e-2,
                               "no_cuda": True, "seed": 3, "save_strategy": "steps"}, tmp_path / "trainer")
    trainer = build_trainer(peft_model, args, features(12), collate, callbacks=[])
    total = count_optimizer_steps(trainer)
    schedule = party_schedule(rounds, total)
    if evaluator == "val":
        tok = AutoTokenizer.from_pretrained(str(tiny_glm))
        val = features(4, seed=9)
        evaluator = Evaluator(val, collate, [f["input_ids"][:4] for f in val], ["ab", "cd", "ef", "gh"], tok,
                              max_new_tokens=3)
    aggregator = SimpleNamespace(last_round_stats={"mask_ms": 1.5, "wait_ms": 2.0, "bytes_sent": 10, "bytes_received": 20})
    runner = RoundRunner(ctx, peft_model, aggregate, aggregator, schedule, 12.0, tmp_path / "out",
                         MetricsLog(tmp_path / "out" / "metrics.json", {}), evaluator=evaluator)
    callback = FederatedCallback(runner)
    trainer.add_callback(callback)
    return trainer, callback, peft_model, total, schedule


def test_rounds_run_at_schedule_steps_and_load_the_aggregate_in_place(tiny_glm, tmp_path):
    ctx = _Ctx()
    seen = []

    def aggregate(round_idx, tensors, weight):
        seen.append((round_idx, weight, trainer.state.global_step))
        return {k: v * 0.5 for k, v in tensors.items()}  # a recognisable "average"

    trainer, callback, peft_model, total, schedule = _setup(tiny_glm, tmp_path, ctx, aggregate, evaluator="val")
    assert total == 6 and schedule.steps == (2, 4, 6)
    trainer.train()
    assert [(r, s) for r, _, s in seen] == [(1, 2), (2, 4), (3, 6)]
    assert all(w == 12.0 for _, w, _ in seen)
    assert callback.rounds_done == 3
    # optimizer state survived the in-place loads: Adam moments exist for the very same parameter objects
    params = [p for p in peft_model.parameters() if p.requires_grad]
    state = trainer.optimizer.state
    assert all(p in state and torch.any(state[p]["exp_avg"] != 0) for p in params)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3]
    first = metrics["rounds"][0]
    assert first["step"] == 2 and np.isfinite(first["train_loss"]) and np.isfinite(first["eval_loss"])
    assert {"exact_match", "rouge_l", "peak_rss_mb", "eta_s", "aggregate_ms"} <= set(first)
    assert first["mask_ms"] == 1.5 and first["bytes_sent"] == 10 and first["bytes_received"] == 20
    for k in (1, 2, 3):
        assert (tmp_path / "out" / f"checkpoint-{k}" / "adapter_model.safetensors").is_file()
    assert [kind for kind, _ in ctx.events].count("metrics") == 3


def test_final_weights_are_the_last_aggregate(tiny_glm, tmp_path):
    ctx = _Ctx()
    fixed = {}

    def aggregate(round_idx, tensors, weight):
        fixed.update({k: np.full_like(v, 0.01 * round_idx) for k, v in tensors.items()})
        return dict(fixed)

    trainer, *_ = _setup(tiny_glm, tmp_path, ctx, aggregate)
    trainer.train()
    final = extract_trainable(trainer.model)
    assert all(np.allclose(final[k], 0.03) for k in fixed)


def test_a_stopped_job_ends_training_with_a_clear_error(tiny_glm, tmp_path):
    ctx = _Ctx(stop_after=1)
    trainer, *_ = _setup(tiny_glm, tmp_path, ctx, lambda r, t, w: t)
    with pytest.raises(JobError, match="stopped during training"):
        trainer.train()
