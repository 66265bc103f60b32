"""One aggregation round end to end, and the TrainerCallback that triggers rounds at the schedule's steps.

A round: extract the trainable tensors → aggregate (plain or OTP, through xfed.aggregation) →
load the average in place (the optimizer keeps its moments) → evaluate on the party's valset →
save `checkpoint-{round}/` → record metrics in metrics.json and the job's event stream.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np
from transformers import TrainerCallback

from xfed.aggregation import LeafBase, RootBase
from xfed.aggregation.privacy import Privatizer
from xfed.errors import JobError
from xfed.operators.context import OperatorContext

from .adapter_state import extract_trainable, load_trainable, save_adapter
from .metrics import MetricsLog, peak_memory_mb
from .metrics_thudm import select_scores
from .reporting import Reporter
from .schedule import Schedule
from .training import greedy_answers, valset_loss

# (round, own tensors or None, own weight) -> weighted mean of everyone's tensors
AggregateFn = Callable[[int, "dict[str, np.ndarray] | None", float], "dict[str, np.ndarray]"]


class Anchor(Protocol):
    """Told each round's global adapter (FedProx's proximal term, DP's clipping reference)."""

    def set_anchor(self, tensors: Mapping[str, np.ndarray]) -> None: ...


@dataclass
class Evaluator:
    """The party's own valset: loss always, generation scores on up to `max_generate` examples."""

    features: list[dict[str, Any]]
    collator: Any
    prompts: list[list[int]]
    answers: list[str]
    tokenizer: Any
    batch_size: int = 8
    max_new_tokens: int = 32
    max_generate: int = 64
    metrics: list[str] | None = None  # dataset.metrics (None: exact_match and character rouge_l)

    def __call__(self, model: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.features:
            out["eval_loss"] = round(valset_loss(model, self.features, self.collator, self.batch_size), 6)
        n = min(len(self.prompts), self.max_generate)
        if n:
            predictions = greedy_answers(model, self.tokenizer, self.prompts[:n], self.max_new_tokens)
            scores = select_scores(predictions, self.answers[:n], self.metrics)
            out.update({k: round(v, 4) for k, v in scores.items()})
        return out


def _aggregator_stats(aggregator: LeafBase | RootBase | None) -> dict[str, float]:
    """mask / unmask / wait milliseconds and bytes of the last round, as the aggregation layer measured them."""
    if aggregator is None:
        return {}
    stats = aggregator.last_round_stats
    wanted = ("mask_ms", "unmask_ms", "wait_ms", "bytes_sent", "bytes_received")
    out = {k: round(float(stats[k]), 1) if k.endswith("_ms") else int(stats[k])
           for k in wanted if isinstance(stats.get(k), (int, float))}
    if isinstance(stats.get("parties"), int) and stats["parties"] > 0:
        out["participants"] = int(stats["parties"])  # parties whose update the round summed
    return out


@dataclass
class RoundRunner:
    """Runs the rounds of one party; shared by label trainers and a training or aggregating assist trainer."""

    ctx: OperatorContext
    peft_model: Any
    aggregate: AggregateFn
    aggregator: LeafBase | RootBase | None  # None: a party training alone
    schedule: Schedule
    weight: float
    output_dir: Path
    metrics: MetricsLog
    evaluator: Evaluator | None = None
    trains: bool = True
    after_checkpoint: Callable[[int], None] | None = None  # resume state of the round (resume.py)
    reporter: Reporter | None = None  # the round to the Trainer's integrations + trainer_state.json
    privatizer: Privatizer | None = None  # with aggregation.dp: clip + noise before upload
    anchors: list[Anchor] = field(default_factory=list)  # told each round's aggregate (FedProx, DP)
    after_load: Callable[[], None] | None = None  # the mean is in place (a DDP party's rank 0 broadcasts it)
    _losses: list[float] = field(default_factory=list)

    def note_loss(self, loss: float) -> None:
        self._losses.append(float(loss))

    def run_round(self, round_idx: int, global_step: int | None) -> dict[str, Any]:
        started = time.monotonic()
        own = extract_trainable(self.peft_model) if self.trains else None
        dp: dict[str, Any] = {}
        if own is not None and self.privatizer is not None:
            own, norm = self.privatizer.release(round_idx, own)  # clipped round delta + this party's noise share
            dp["dp_update_norm"] = round(norm, 6)
        agg_started = time.monotonic()
        averaged = self.aggregate(round_idx, own, self.weight if self.trains else 0.0)
        agg_ms = (time.monotonic() - agg_started) * 1000
        self._check_finite(averaged, round_idx)
        load_trainable(self.peft_model, averaged, source=f"aggregate of round {round_idx}")
        if self.after_load is not None:
            self.after_load()
        for anchor in self.anchors:
            anchor.set_anchor(averaged)
        if self.privatizer is not None:
            dp.update(self.privatizer.spent(round_idx))
        record: dict[str, Any] = {"round": round_idx, "rounds": self.schedule.rounds, "node": self.ctx.node_id, **dp}
        contributors = getattr(self.aggregator, "last_contributors", None)
        if contributors:  # dropout-tolerant secure aggregation: who this round's mean is over
            record["contributors"] = list(contributors)
        if global_step is not None:
            record["step"] = global_step
        if self._losses:
            record["train_loss"] = round(sum(self._losses) / len(self._losses), 6)
            self._losses.clear()
        if self.evaluator is not None:
            record.update(self.evaluator(self.peft_model))
        save_adapter(self.peft_model, self.output_dir / f"checkpoint-{round_idx}")
        record["aggregate_ms"] = round(agg_ms, 1)
        record.update(_aggregator_stats(self.aggregator))  # the round's own traffic, when measured
        record.update(peak_memory_mb())
        record["round_s"] = round(time.monotonic() - started, 3)
        record["eta_s"] = self.metrics.eta_seconds(round_idx, self.schedule.rounds)
        # the record before the resume state, whose state.json marks the round complete: a kill in
        # between must not resume after a round whose record is missing
        self.metrics.add(record)
        if self.reporter is not None:
            self.reporter.log_round(record)
        if self.after_checkpoint is not None:
            self.after_checkpoint(round_idx)
        self.ctx.report("metrics", record)
        self.ctx.report("progress", {"round": round_idx, "rounds": self.schedule.rounds, "eta_s": record["eta_s"],
                                     "fraction": round(round_idx / self.schedule.rounds, 4),
                                     **{k: v for k, v in dp.items() if k in ("dp_epsilon", "dp_delta")}})
        return record

    def _check_finite(self, tensors: dict[str, np.ndarray], round_idx: int) -> None:
        for name, value in tensors.items():
            if not np.all(np.isfinite(value)):
                raise JobError(f"{self.ctx.node_id}: round {round_idx} aggregate has non-finite values in {name}")


class FederatedCallback(TrainerCallback):
    """Runs `RoundRunner.run_round` at the schedule's optimizer steps; stops training when the job stops.

    The Trainer logs a step's loss after `on_step_end`, so a round that ends at step s is marked
    there and run from `on_log` (logging every step is forced), once the step's loss is known;
    `on_train_end` runs a round still pending if no log came.
    """

    PROGRESS_EVERY_S = 5.0  # step progress between rounds, throttled: a 6B model's round can take an hour

    def __init__(self, runner: RoundRunner):
        self.runner = runner
        self.rounds_done = 0
        self._pending: tuple[int, int] | None = None
        self._last_progress = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self.runner.ctx.should_stop():
            raise JobError(f"{self.runner.ctx.node_id}: job stopped during training (step {state.global_step})")
        self._flush()  # a round whose log never came
        now = time.monotonic()
        if now - self._last_progress >= self.PROGRESS_EVERY_S:
            self._last_progress = now
            total = self.runner.schedule.total_steps
            self.runner.ctx.report("progress", {
                "round": self.rounds_done, "rounds": self.runner.schedule.rounds, "step": state.global_step,
                "steps": total, "fraction": round(state.global_step / total, 4)})
        round_idx = self.runner.schedule.round_at(state.global_step)
        if round_idx is not None:
            self._pending = (round_idx, state.global_step)
            control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if isinstance(loss, (int, float)) and math.isfinite(loss):
            self.runner.note_loss(loss)
        self._flush()

    def on_train_end(self, args, state, control, **kwargs):
        self._flush()

    def _flush(self) -> None:
        if self._pending is not None:
            round_idx, step = self._pending
            self._pending = None
            self.runner.run_round(round_idx, step)
            self.rounds_done = round_idx
