"""What the aggregator does with the weighted sum of the parties' tensors (one strategy per file)."""

from xfed.aggregation.strategy.fedavg import FedAvg, Strategy

__all__ = ["FedAvg", "Strategy"]
