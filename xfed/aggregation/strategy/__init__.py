"""What the aggregator does with the round's weighted mean (one strategy per file; `aggregation.strategy`).

A new strategy: one file with a `Strategy` subclass (its `Params` model documents every parameter with
its default), added to `STRATEGIES` below; the config key accepts it from then on.
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import create_model, model_validator
from pydantic_core import PydanticCustomError

from xfed.aggregation.strategy.base import Strategy, StrategyParams, weighted_mean
from xfed.aggregation.strategy.fedadagrad import FedAdagrad
from xfed.aggregation.strategy.fedadam import FedAdam
from xfed.aggregation.strategy.fedavg import FedAvg
from xfed.aggregation.strategy.fedavgm import FedAvgM
from xfed.aggregation.strategy.fedyogi import FedYogi
from xfed.errors import ConfigError

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad)}

__all__ = ["STRATEGIES", "Strategy", "StrategyParams", "FedAvg", "FedAvgM", "FedAdam", "FedYogi", "FedAdagrad",
           "make_strategy", "weighted_mean", "StrategyChoice"]


def make_strategy(name: str = "fedavg", params: StrategyParams | Mapping[str, Any] | None = None,
                  rounds: int | None = None) -> Strategy:
    """The strategy called `name` with its parameters (a validated Params model, or a dict to validate);
    `rounds`: the job's rounds (needed by a server learning-rate schedule)."""
    cls = STRATEGIES.get(name)
    if cls is None:
        raise ConfigError(f"aggregation.strategy: unknown strategy {name!r} (one of {', '.join(STRATEGIES)})")
    if params is not None and not isinstance(params, cls.Params):
        params = cls.Params.model_validate(dict(params))
    return cls(params, rounds)


class _OneStrategy(StrategyParams):
    """`aggregation.strategy`: a name ("fedadam") or one name with its parameters ({"fedadam": {...}})."""

    @model_validator(mode="before")
    @classmethod
    def _name(cls, data: Any) -> Any:
        if isinstance(data, str):
            if data not in STRATEGIES:
                raise PydanticCustomError("strategy", "unknown strategy '{name}' (one of {known})",
                                          {"name": data, "known": ", ".join(STRATEGIES)})
            return {data: {}}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> "_OneStrategy":
        chosen = [k for k in STRATEGIES if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise PydanticCustomError("strategy", "exactly one of {known} is required{got}",
                                      {"known": ", ".join(STRATEGIES),
                                       "got": f" (found {' and '.join(chosen)})" if chosen else ""})
        return self

    @property
    def name(self) -> str:
        return next(k for k in STRATEGIES if getattr(self, k) is not None)

    def build(self, rounds: int | None = None) -> Strategy:
        return STRATEGIES[self.name](getattr(self, self.name), rounds)


# one optional field per registered strategy, typed by its Params model: the registry is the only list
StrategyChoice = create_model("StrategyChoice", __base__=_OneStrategy,
                              **{name: (cls.Params | None, None) for name, cls in STRATEGIES.items()})
