"""Reporting a federated job through the Hugging Face Trainer's own integrations and state file.

`trainer.report_to` (a party's own key; default "none") picks the Trainer's integration callbacks
(tensorboard, mlflow, wandb, ... as installed on that party). xfed adds the federated context:
the run name `xfed-{job}-{node}` (unless `trainer.run_name` is set), MLflow tags and the W&B group/tags
through their documented environment variables, and a text record {job, node, identity} in TensorBoard.
TensorBoard event files go to `OUTPUT/runs/` (beside the adapters) unless TENSORBOARD_LOGGING_DIR says
otherwise; they are written by the writer directly, no TensorBoard server is involved.

After every round the round's record (participants, bytes, mask/unmask ms, validation metrics) is
logged to the same callbacks as `round/...` scalars at the party's optimizer step (the aggregator,
which may have no Trainer, logs at the round number), and `trainer_state.json` — the Trainer's
TrainerState with `log_history` holding every step's loss, learning rate and grad norm, plus one
entry per round — is rewritten in the party's output folder.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from xfed.errors import ConfigError

from .growing_json import save_trainer_state

# record keys that are not numbers worth a curve (or say the same as the step axis)
_NOT_LOGGED = {"node", "rounds", "step"}


def report_to_list(value: Any) -> list[str]:
    """TrainingArguments.report_to as a list (None / "none" -> [])."""
    if value is None or value == "none":
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value if v != "none"]


def check_backends(report_to: Any, node: str) -> None:
    """A one-line error naming the party when a listed backend is unknown or not installed there."""
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    wanted = report_to_list(report_to)
    if wanted == ["all"]:
        return
    unknown = [b for b in wanted if b not in INTEGRATION_TO_CALLBACK]
    if unknown:
        raise ConfigError(f"{node}: train_params.trainer.report_to: unknown backend(s) {', '.join(unknown)} "
                          f"(known: {', '.join(INTEGRATION_TO_CALLBACK)})")
    available = set(get_available_reporting_integrations())
    missing = [b for b in wanted if b not in available]
    if missing:
        raise ConfigError(f"{node}: train_params.trainer.report_to: {', '.join(missing)} is not installed on this "
                          f"party (pip install {' '.join(missing)}, or remove it from report_to)")


def run_name(job_id: str, node: str) -> str:
    return f"xfed-{job_id}-{node}"


def set_context_env(job_id: str, node: str, identity: str) -> None:
    """The job's context where MLflow and W&B callbacks read it (a user's own values win)."""
    os.environ.setdefault("MLFLOW_TAGS", json.dumps({"xfed.job": job_id, "xfed.node": node,
                                                      "xfed.identity": identity}))
    os.environ.setdefault("WANDB_RUN_GROUP", f"xfed-{job_id}")
    os.environ.setdefault("WANDB_TAGS", f"xfed,job-{job_id},{node},{identity}")


def round_logs(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a round's record as `round/<key>` scalars."""
    return {f"round/{k}": float(v) for k, v in record.items()
            if k not in _NOT_LOGGED and isinstance(v, (int, float)) and not isinstance(v, bool)}


class Reporter:
    """One party's reporting: the Trainer's integration callbacks (or its own set for an assist trainer
    without a Trainer), round scalars and trainer_state.json."""

    def __init__(self, args: Any, trainer: Any, output_dir: Path, *, job_id: str, node: str, identity: str) -> None:
        from transformers import TrainerControl, TrainerState
        from transformers.integrations.integration_utils import (
            INTEGRATION_TO_CALLBACK,
            TensorBoardCallback,
            get_reporting_integration_callbacks,
        )

        self.output_dir, self.node, self.trainer = output_dir, node, trainer
        self.context = {"job_id": job_id, "node": node, "identity": identity}
        if trainer is not None:
            self.args = trainer.args
            kinds = tuple(INTEGRATION_TO_CALLBACK.values())
            self.callbacks = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, kinds)]
            self._own = False
        else:
            self.args, self._state, self._control = args, TrainerState(), TrainerControl()
            self.callbacks = [cls() for cls in get_reporting_integration_callbacks(args.report_to)]
            self._own = True
        for cb in self.callbacks:
            if isinstance(cb, TensorBoardCallback) and cb.logging_dir is None:
                cb.logging_dir = str(output_dir / "runs")  # beside the adapters, not in the work folder
        self._started = False

    # train() gives the Trainer a new state and control: always read the current ones
    @property
    def state(self) -> Any:
        return self._state if self._own else self.trainer.state

    @property
    def control(self) -> Any:
        return self._control if self._own else self.trainer.control

    def start(self) -> None:
        """on_train_begin for an assist trainer's own callbacks (the Trainer calls it for the others)."""
        if self._own and not self._started:
            for cb in self.callbacks:
                cb.on_train_begin(self.args, self.state, self.control)
        self._started = True
        self._write_context()

    def _write_context(self) -> None:
        from transformers.integrations.integration_utils import TensorBoardCallback

        for cb in self.callbacks:
            if isinstance(cb, TensorBoardCallback):
                if cb.tb_writer is None:
                    cb._init_summary_writer(self.args)
                if cb.tb_writer is not None:
                    cb.tb_writer.add_text("xfed/context", json.dumps(self.context))
                    cb.tb_writer.flush()

    def log_round(self, record: dict[str, Any]) -> None:
        """The round's numbers to every backend, the round into log_history, trainer_state.json rewritten."""
        logs = round_logs(record)
        if self._own:
            self.state.global_step = int(record.get("round", 0))
        for cb in self.callbacks:
            cb.on_log(self.args, self.state, self.control, logs=dict(logs))
        entry = {k: v for k, v in record.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        entry.setdefault("step", self.state.global_step)
        self.state.log_history.append(entry)  # flat, as the Trainer's own eval entries; "round" marks it
        self.save_state()

    def save_state(self, folder: Path | None = None) -> Path:
        """trainer_state.json (the Trainer's TrainerState) in `folder` (default the party's output)."""
        path = (folder or self.output_dir) / "trainer_state.json"
        save_trainer_state(self.state, path)  # save_to_json's file, log_history not re-encoded each round
        return path

    def finish(self) -> None:
        if self._own:
            for cb in self.callbacks:
                cb.on_train_end(self.args, self.state, self.control)
