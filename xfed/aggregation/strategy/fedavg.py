"""FedAvg: the global adapter is the weighted mean of the parties' adapters (weights = examples or 1).

The aggregation layer hands a strategy the weighted *sum* (formed in the clear or under one-time
pads, the strategy cannot tell) and the total weight; a strategy with state (FedAvgM, FedAdam)
subclasses `Strategy` in its own file and keeps that state on the instance.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from xfed.errors import JobError


class Strategy:
    """Turns sum_i(w_i * x_i) and sum_i(w_i) of one round into the global tensors (float32)."""

    name = "strategy"

    def start(self, initial: Mapping[str, np.ndarray]) -> None:
        """Called with the initial global tensors (root's broadcast_initial); stateful strategies keep them."""

    def finalize(self, round_idx: int, weighted_sum: Mapping[str, np.ndarray],
                 total_weight: float) -> dict[str, np.ndarray]:
        raise NotImplementedError


class FedAvg(Strategy):
    """Weighted mean: sum / total weight, cast to float32.

    Parameters: none. `total_weight` must be positive (a round where every party has weight 0
    is refused: there is nothing to average).
    """

    name = "fedavg"

    def finalize(self, round_idx: int, weighted_sum: Mapping[str, np.ndarray],
                 total_weight: float) -> dict[str, np.ndarray]:
        total = float(total_weight)
        if not np.isfinite(total) or total <= 0:
            raise JobError(f"round {round_idx}: total aggregation weight is {total_weight!r}; "
                           "nothing to average (every party has weight 0?)")
        out: dict[str, np.ndarray] = {}
        for name, value in weighted_sum.items():
            mean = np.asarray(value, dtype=np.float64) / total
            out[name] = mean.astype(np.float32, copy=False)
        return out
