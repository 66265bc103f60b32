"""FedAdagrad (Reddi et al. 2021): v_t = v_{t−1} + Δ_t² (see fedopt.py); β2 is not used."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from xfed.aggregation.strategy.fedopt import FedOpt, FedOptParams


class FedAdagradParams(FedOptParams):
    beta_1: float = Field(0.0, ge=0, lt=1, allow_inf_nan=False,
                          description="β1: first-moment decay in [0, 1) (default 0: no momentum, as Flower's).")


class FedAdagrad(FedOpt):
    """Parameters (`FedAdagradParams`): server_lr η (default 0.01), beta_1 (0.0), tau τ (0.001)."""

    name = "fedadagrad"
    Params = FedAdagradParams

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v + delta_sq

    def v_correction(self, t: int) -> float:
        return 1.0  # a sum, not an average: nothing to correct
