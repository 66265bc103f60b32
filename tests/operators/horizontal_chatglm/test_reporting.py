"""Reporting through the Trainer's integrations: TensorBoard event files (read back with tensorboard's own
reader, no server), round scalars, federated context and trainer_state.json with every step."""
from __future__ import annotations

import json

import pytest
import torch

from tests.tensorboard_events import read_scalars
from xfed.errors import ConfigError
from xfed.operators.horizontal_chatglm import reporting
from xfed.operators.horizontal_chatglm.config import Peft
from xfed.operators.horizontal_chatglm.metrics import MetricsLog
from xfed.operators.horizontal_chatglm.peft_setup import apply_peft
from xfed.operators.horizontal_chatglm.rounds import FederatedCallback, RoundRunner
from xfed.operators.horizontal_chatglm.schedule import party_schedule
from xfed.operators.horizontal_chatglm.training import (
    build_trainer,
    training_arguments,
)

from ._helpers import collate, features


class _Ctx:
    node_id, attempt, job_id = "node-1", 0, "7"

    def report(self, kind, data):
        pass

    def should_stop(self):
        return False


class _Stats:  # what an aggregator measured in its last round
    last_round_stats = {"mask_ms": 1.5, "unmask_ms": 0.0, "wait_ms": 2.0, "bytes_sent": 100, "bytes_received": 40,
                        "parties": 2}


def test_label_trainer_writes_event_files_and_trainer_state_with_every_step(tiny_glm, tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    peft_model = apply_peft(AutoModelForCausalLM.from_pretrained(str(tiny_glm)),
                            Peft.model_validate({"LORA": {"r": 2, "target_modules": ["q_proj", "v_proj"], "lora_alpha": 8,
                                                          "lora_dropout": 0.0}}))
    args = training_arguments({"per_device_train_batch_size": 2, "num_train_epochs": 1, "learning_rate": 1e-2, "no_cuda": True,
                               "report_to": ["tensorboard"], "run_name": reporting.run_name("7", "node-1")},
                              tmp_path / "trainer")
    trainer = build_trainer(peft_model, args, features(8), collate, callbacks=[])
    out = tmp_path / "out"
    reporter = reporting.Reporter(args, trainer, out, job_id="7", node="node-1", identity="label_trainer")
    runner = RoundRunner(_Ctx(), peft_model, lambda _r, t, _w: t, _Stats(), party_schedule(2, 4), 1.0, out,
                         MetricsLog(out / "metrics.json", {}), reporter=reporter)
    trainer.add_callback(FederatedCallback(runner))
    reporter.start()
    trainer.train()
    reporter.save_state()

    scalars, texts = read_scalars(out / "runs")
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4]  # every optimizer step
    assert [s for s, _ in scalars["train/round/round"]] == [2, 4]  # each round at its step
    assert [v for _, v in scalars["train/round/round"]] == [1.0, 2.0]
    assert [v for _, v in scalars["train/round/participants"]] == [2.0, 2.0]
    assert scalars["train/round/bytes_sent"][0][1] == 100.0 and "train/round/mask_ms" in scalars
    assert any(t.startswith("xfed/context") and '"job_id": "7"' in t and '"node": "node-1"' in t for t in texts)

    state = json.loads((out / "trainer_state.json").read_text())
    steps = [e for e in state["log_history"] if "loss" in e]
    assert [e["step"] for e in steps] == [1, 2, 3, 4]
    assert all({"loss", "learning_rate", "grad_norm"} <= set(e) for e in steps)
    rounds = [e for e in state["log_history"] if "round" in e]
    assert [(e["round"], e["step"]) for e in rounds] == [(1, 2), (2, 4)] and rounds[0]["participants"] == 2


def test_aggregator_without_a_trainer_logs_rounds_at_the_round_number(tmp_path):
    args = training_arguments({"report_to": "tensorboard", "no_cuda": True}, tmp_path / "trainer")
    reporter = reporting.Reporter(args, None, tmp_path / "out", job_id="3", node="assist_trainer",
                                  identity="assist_trainer")
    reporter.start()
    for k in (1, 2, 3):
        reporter.log_round({"round": k, "node": "assist_trainer", "participants": 3, "unmask_ms": 4.0 * k,
                            "bytes_received": 1000})
    reporter.finish()
    scalars, _ = read_scalars(tmp_path / "out" / "runs")
    assert scalars["train/round/unmask_ms"] == [(1, 4.0), (2, 8.0), (3, 12.0)]
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert [e["round"] for e in state["log_history"]] == [1, 2, 3]


def test_default_is_no_backend_and_a_missing_backend_is_a_one_line_error(tmp_path):
    args = training_arguments({"no_cuda": True}, tmp_path / "trainer")
    assert reporting.report_to_list(args.report_to) == []
    reporting.check_backends(["tensorboard"], "node-1")
    with pytest.raises(ConfigError, match="node-1: train_params.trainer.report_to: unknown backend.*nosuch"):
        reporting.check_backends(["nosuch"], "node-1")


def test_report_to_is_each_partys_own_and_never_handed_on_by_the_assist_trainer():
    from xfed.operators.horizontal_chatglm.config import validated_params
    from xfed.operators.horizontal_chatglm.merge import merge_authoritative

    def partial(raw: dict):
        return validated_params(raw, "node-1", complete=False)

    assist = partial({"trainer": {"learning_rate": 0.1, "report_to": ["wandb"], "run_name": "agg"}})
    merged, conflicts = merge_authoritative(assist, partial({"trainer": {"per_device_train_batch_size": 2}}))
    assert "report_to" not in merged.trainer and "run_name" not in merged.trainer and not conflicts
    merged, conflicts = merge_authoritative(assist, partial({"trainer": {"report_to": ["tensorboard"]}}))
    assert merged.trainer["report_to"] == ["tensorboard"] and not conflicts
