"""FedAvg (McMahan et al. 2017): the global adapter is the weighted mean of the parties' adapters."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from xfed.aggregation.strategy.base import Strategy


class FedAvg(Strategy):
    """Weighted mean (weights = examples or 1, `aggregation.weighting`), cast to float32.

    Parameters: none. A round where every party has weight 0 is refused: there is nothing to average.
    """

    name = "fedavg"

    def update(self, round_idx: int, mean: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        return mean
