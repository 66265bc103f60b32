"""FedYogi (Reddi et al. 2021): v_t = v_{t−1} − (1 − β2) Δ_t² sign(v_{t−1} − Δ_t²) (see fedopt.py).

Unlike Adam's, v grows or shrinks by at most (1 − β2) Δ_t² per round, so one large round cannot wipe out
what v had learned (Zaheer et al. 2018).
"""

from __future__ import annotations

import numpy as np

from xfed.aggregation.strategy.fedopt import FedOpt, FedOptParams


class FedYogi(FedOpt):
    """Parameters (`FedOptParams`): server_lr η (default 0.01), beta_1 (0.9), beta_2 (0.99), tau τ (0.001)."""

    name = "fedyogi"
    Params = FedOptParams

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v - (1 - self.params.beta_2) * delta_sq * np.sign(v - delta_sq)
