"""FedAvgM (Hsu et al. 2019, "Measuring the effects of non-identical data distribution"): server momentum.

With Δ_t = mean_t − x_t (the round's average change; the negative pseudo-gradient):
    v_t = β v_{t−1} + Δ_t,    x_{t+1} = x_t + η v_t     (v_0 = 0)
β = 0, η = 1 is FedAvg; η > 1 takes a larger step than the parties' average (η = n adds the n parties'
changes rather than averaging them).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from pydantic import Field

from xfed.aggregation.strategy.base import ServerLrParams, Strategy, fraction, positive


class FedAvgMParams(ServerLrParams):
    server_lr: float = positive("η: server learning rate (1.0: the parties' average change).", 1.0)
    momentum: float = fraction("β: server momentum in [0, 1) (0: none).", 0.9)
    nesterov: bool = Field(False, description="Nesterov momentum: x_{t+1} = x_t + η (β v_t + Δ_t).")


class FedAvgM(Strategy):
    """Server momentum on the round's average change. Parameters (`FedAvgMParams`): server_lr η
    (default 1.0), momentum β (default 0.9), nesterov (default false). State: the velocity v."""

    name = "fedavgm"
    Params = FedAvgMParams

    def __init__(self, params: FedAvgMParams | None = None, rounds: int | None = None) -> None:
        super().__init__(params, rounds)
        self.velocity: dict[str, np.ndarray] = {}

    def update(self, round_idx: int, mean: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        p, x, lr = self.params, self.previous(mean), self.server_lr(round_idx)
        out = {}
        for k in mean:
            delta = mean[k] - x[k]
            v = p.momentum * self.velocity.get(k, 0.0) + delta
            self.velocity[k] = v
            out[k] = x[k] + lr * (p.momentum * v + delta if p.nesterov else v)
        return out

    def state(self) -> dict[str, np.ndarray]:
        return {f"velocity/{k}": v for k, v in self.velocity.items()}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        self.velocity = _unprefix(self.name, state, "velocity/")


def _unprefix(name: str, state: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    from xfed.errors import JobError

    bad = [k for k in state if not k.startswith(prefix)]
    if bad:
        raise JobError(f"strategy {name}: saved state has unexpected entries {bad[:3]}")
    return {k[len(prefix):]: np.asarray(v, dtype=np.float64) for k, v in state.items()}
