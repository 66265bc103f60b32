"""FedOpt (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2): the shared skeleton of
FedAdagrad, FedAdam and FedYogi, which differ only in how the second moment v is updated (`second_moment`).

With Δ_t = mean_t − x_t (the round's average change; the negative pseudo-gradient), element-wise:
    m_t = β1 m_{t−1} + (1 − β1) Δ_t                      (m_{−1} = 0)
    v_t = second_moment(v_{t−1}, Δ_t²)                   (v_{−1} = τ², as in the paper)
    x_{t+1} = x_t + η_t m_t / (√v_t + τ)                (η_t: η, or its cosine decay over the rounds)
No bias correction by default (the paper has none; with v_{−1} = τ² the first step is already about
η·sign(Δ)). With `bias_correction` it is Adam's (Kingma & Ba; Flower's FedAdam has it too): v_{−1} = 0 and
    x_{t+1} = x_t + η_t (m_t / (1 − β1^t)) / (√(v_t / (1 − β2^t)) + τ)     (t = the round, 1-based)
so FedAdam over parties that each take one plain SGD step (lr 1) per round is Adam on the mean of their
gradients: the centralized optimizer, with the federation's examples as its batch. `clip_norm` c scales
Δ_t (all tensors together) by min(1, c / (‖Δ_t‖ + 1e-6)) first, as torch's `clip_grad_norm_` (the
Trainer's `max_grad_norm`) does to the centralized gradient; with the parties' own clipping off, that
makes the federation the centralized optimizer including its clipping.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
from pydantic import Field

from xfed.aggregation.strategy.base import ServerLrParams, Strategy, fraction, positive
from xfed.errors import JobError


class FedOptParams(ServerLrParams):
    server_lr: float = positive("η: server learning rate (each element moves by about η per round).", 1e-2)
    beta_1: float = fraction("β1: first-moment (momentum) decay in [0, 1).", 0.9)
    beta_2: float = fraction("β2: second-moment decay in [0, 1) (FedAdam, FedYogi; unused by FedAdagrad).", 0.99)
    tau: float = positive("τ: adaptivity; added to √v (larger τ: closer to server SGD with momentum).", 1e-3)
    bias_correction: bool = Field(False, description="Adam's bias correction of m and v (v starts at 0); "
                                                     "off: Reddi et al.'s FedOpt (v starts at τ²).")
    clip_norm: float | None = Field(None, gt=0, allow_inf_nan=False,
                                    description="clip Δ (the L2 norm over every tensor) to this norm before the "
                                                "step, as torch's clip_grad_norm_ does a gradient; none: no clipping.")


def clip_global_norm(tensors: Mapping[str, np.ndarray], max_norm: float) -> dict[str, np.ndarray]:
    """Every tensor scaled by min(1, max_norm / (‖all‖ + 1e-6)): torch.nn.utils.clip_grad_norm_'s rule, so a
    server clipping the mean change clips as the centralized Trainer clips its gradient."""
    total = math.sqrt(sum(float(np.vdot(t, t)) for t in tensors.values()))
    coef = min(1.0, max_norm / (total + 1e-6))
    return {k: t * coef for k, t in tensors.items()} if coef < 1.0 else dict(tensors)


class FedOpt(Strategy):
    """Adaptive server optimizer; subclasses define `second_moment`. State: m and v per tensor."""

    name = "fedopt"
    Params = FedOptParams

    def __init__(self, params: FedOptParams | None = None, rounds: int | None = None) -> None:
        super().__init__(params, rounds)
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def v_correction(self, t: int) -> float:
        """What `bias_correction` divides v_t by: 1 − β2^t for an exponential average (Adam, Yogi)."""
        return 1.0 - self.params.beta_2 ** t

    def update(self, round_idx: int, mean: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        p, x, lr = self.params, self.previous(mean), self.server_lr(round_idx)
        m_scale, v_scale, v_start = 1.0, 1.0, p.tau ** 2
        if p.bias_correction:
            t = max(int(round_idx), 1)
            m_scale, v_scale, v_start = 1.0 - p.beta_1 ** t, self.v_correction(t), 0.0
        deltas = {k: mean[k] - x[k] for k in mean}
        if p.clip_norm is not None:
            deltas = clip_global_norm(deltas, p.clip_norm)
        out = {}
        for k, delta in deltas.items():
            m = p.beta_1 * self.m.get(k, 0.0) + (1 - p.beta_1) * delta
            v = self.second_moment(self.v.get(k, np.full_like(delta, v_start)), delta * delta)
            self.m[k], self.v[k] = m, v
            out[k] = x[k] + lr * (m / m_scale) / (np.sqrt(v / v_scale) + p.tau)
        return out

    def state(self) -> dict[str, np.ndarray]:
        return {**{f"m/{k}": v for k, v in self.m.items()}, **{f"v/{k}": v for k, v in self.v.items()}}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        bad = [k for k in state if not k.startswith(("m/", "v/"))]
        if bad:
            raise JobError(f"strategy {self.name}: saved state has unexpected entries {bad[:3]}")
        self.m = {k[2:]: np.asarray(v, dtype=np.float64) for k, v in state.items() if k.startswith("m/")}
        self.v = {k[2:]: np.asarray(v, dtype=np.float64) for k, v in state.items() if k.startswith("v/")}
