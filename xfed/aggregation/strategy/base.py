"""What every server strategy shares: the interface, its typed parameters, the weighted mean it receives.

The aggregation layer (plain, otp, or any other way of forming the sum) decodes the round's weighted
sum and divides it by the total weight; a strategy only ever sees that mean and the global tensors it
broadcast the round before. So a strategy works unchanged under every aggregation protocol, and a new
strategy is one file with one `Strategy` subclass (registered in `strategy/__init__.py`).

Resume: `state()` returns everything a strategy carries from one round to the next beyond the global
tensors (moments, round counter) as named float64 arrays; the assist trainer saves it with the round's
resume state and `load_state` puts it back after `start` (the global tensors are the restored aggregate).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal, Mapping

import numpy as np
from pydantic import Field

from xfed.config.base import ConfigModel
from xfed.errors import JobError


class StrategyParams(ConfigModel):
    """Parameters of a strategy without any (FedAvg)."""


class ServerLrParams(StrategyParams):
    """Parameters of a strategy with a server learning rate η (FedAvgM, the FedOpt family)."""

    server_lr: float
    server_lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="constant: η every round; cosine: η·½(1 + cos(π(t−1)/T)) in round t "
                                "of T (η in round 1, decaying towards 0 in the last).")
    server_warmup_rounds: int = Field(
        0, ge=0, description="W: η·(t−1)/W in rounds t ≤ W (round 1 only updates the moments), then the "
                             "schedule over the remaining T − W rounds: transformers' linear warm-up, so a "
                             "server optimizer follows a Trainer with warmup_steps W step for step.")


def weighted_mean(round_idx: int, weighted_sum: Mapping[str, np.ndarray], total_weight: float) -> dict[str, np.ndarray]:
    """sum_i(w_i x_i) / sum_i(w_i) in float64; a round whose total weight is 0 has nothing to average."""
    total = float(total_weight)
    if not np.isfinite(total) or total <= 0:
        raise JobError(f"round {round_idx}: total aggregation weight is {total_weight!r}; "
                       "nothing to average (every party has weight 0?)")
    return {name: np.asarray(value, dtype=np.float64) / total for name, value in weighted_sum.items()}


class Strategy:
    """Turns the round's weighted mean into the next global tensors (float32, what the root broadcasts).

    `start(initial)` gets the starting global tensors; `step(round, mean)` returns round's global.
    """

    name: ClassVar[str] = "strategy"
    Params: ClassVar[type[StrategyParams]] = StrategyParams

    def __init__(self, params: StrategyParams | None = None, rounds: int | None = None) -> None:
        self.params = params if params is not None else self.Params()
        self.rounds = rounds  # the job's rounds (a server learning-rate schedule needs them)
        self.current: dict[str, np.ndarray] | None = None  # the global tensors last broadcast (float32)
        if isinstance(self.params, ServerLrParams) and self.params.server_lr_schedule != "constant" and not rounds:
            raise JobError(f"strategy {self.name}: server_lr_schedule "
                           f"{self.params.server_lr_schedule!r} needs the job's number of rounds")
        if isinstance(self.params, ServerLrParams) and rounds and self.params.server_warmup_rounds >= rounds:
            raise JobError(f"strategy {self.name}: server_warmup_rounds {self.params.server_warmup_rounds} "
                           f"leaves none of the job's {rounds} rounds after the warm-up")

    def server_lr(self, round_idx: int) -> float:
        """η of round `round_idx` (1-based) under the strategy's `server_lr_schedule`: constant, or cosine
        from η in round 1 towards 0 after the last round, as the parties' own cosine schedule decays per step
        (a server optimizer at a constant η keeps moving the adapter by ~η a round to the end); after
        `server_warmup_rounds` W of linear warm-up, as transformers' schedules with warmup_steps W
        (round t is the Trainer's step t − 1: the factor is (t−1)/W, 0 in round 1)."""
        p = self.params
        if not isinstance(p, ServerLrParams):
            raise JobError(f"strategy {self.name} has no server learning rate")
        step, warmup = max(round_idx - 1, 0), p.server_warmup_rounds
        if step < warmup:
            return p.server_lr * step / warmup
        if p.server_lr_schedule == "constant":
            return p.server_lr
        progress = min(step - warmup, self.rounds - warmup) / (self.rounds - warmup)
        return p.server_lr * 0.5 * (1.0 + math.cos(math.pi * progress))

    def start(self, initial: Mapping[str, np.ndarray]) -> None:
        self.current = {k: np.asarray(v, dtype=np.float32).copy() for k, v in initial.items()}

    def finalize(self, round_idx: int, weighted_sum: Mapping[str, np.ndarray],
                 total_weight: float) -> dict[str, np.ndarray]:
        """The aggregation layer's entry: mean of the decoded sum, then this strategy's step."""
        return self.step(round_idx, weighted_mean(round_idx, weighted_sum, total_weight))

    def step(self, round_idx: int, mean: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        new = self.update(round_idx, {k: np.asarray(v, dtype=np.float64) for k, v in mean.items()})
        self.current = {k: np.asarray(v, dtype=np.float32) for k, v in new.items()}
        return dict(self.current)

    def update(self, round_idx: int, mean: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """The strategy proper: float64 mean -> new global (cast to float32 by `step`)."""
        raise NotImplementedError

    def previous(self, mean: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The global tensors of the last round as float64 (a strategy with a server optimizer needs them)."""
        if self.current is None or set(self.current) != set(mean):
            raise JobError(f"strategy {self.name}: no initial tensors matching the round's mean "
                           "(start() was not called with the broadcast adapter)")
        return {k: v.astype(np.float64) for k, v in self.current.items()}

    # -- resume ----------------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        if state:
            raise JobError(f"strategy {self.name}: saved state {sorted(state)[:3]} does not belong to it")


def positive(description: str, default: float) -> float:
    """A Field for a strictly positive float with its documented default."""
    return Field(default, gt=0, allow_inf_nan=False, description=description)


def fraction(description: str, default: float) -> float:
    """A Field for a float in [0, 1)."""
    return Field(default, ge=0, lt=1, allow_inf_nan=False, description=description)
