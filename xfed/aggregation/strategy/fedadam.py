"""FedAdam (Reddi et al. 2021): Adam on the server, v_t = β2 v_{t−1} + (1 − β2) Δ_t² (see fedopt.py)."""

from __future__ import annotations

import numpy as np

from xfed.aggregation.strategy.fedopt import FedOpt, FedOptParams


class FedAdam(FedOpt):
    """Parameters (`FedOptParams`): server_lr η (default 0.01), beta_1 (0.9), beta_2 (0.99), tau τ (0.001)."""

    name = "fedadam"
    Params = FedOptParams

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        b2 = self.params.beta_2
        return b2 * v + (1 - b2) * delta_sq
