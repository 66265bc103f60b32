"""`encryption.otp.dropout`: the opt-in settings of dropout-tolerant secure aggregation (docs/SECAGG.md §6).

    "encryption": {"otp": {..., "dropout": {"threshold": 3, "round_timeout_s": 60}}}

threshold t: Shamir threshold and the fewest label trainers a round may sum. It must satisfy
n/2 < t <= n for n label trainers: with t <= n/2 two disjoint survivor sets could each
reconstruct, so an aggregator could reveal one party's self-mask seed to one set and its pad key
to the other. round_timeout_s: how long the aggregator (and a trainer waiting for its peers' round
keys) waits before a missing party counts as dropped. precompute_pads: draw the next round's pads
in a background thread while local steps run (on a CPU-only party they compete with training).
`min_parties` (from `aggregation.min_parties` where an operator has it) raises the floor above t.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from xfed.errors import ConfigError

WHERE = "train_params.encryption.otp.dropout"


class Dropout(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    threshold: int = Field(..., ge=1, le=10_000, description="Shamir threshold t, n/2 < t <= n.")
    round_timeout_s: float = Field(60.0, gt=0, le=86_400,
                                   description="Seconds to wait for every upload before missing ones count as dropped.")
    precompute_pads: bool = Field(False, description="Draw a round's pads while local steps run.")


def check_membership(settings: Dropout, n_trainers: int, min_parties: int | None = None) -> int:
    """The floor of survivors a round needs (max(t, min_parties)); ConfigError if t or min_parties do not fit n."""
    t = settings.threshold
    if t > n_trainers:
        raise ConfigError(f"{WHERE}.threshold: {t} exceeds the {n_trainers} label trainers")
    if 2 * t <= n_trainers:
        raise ConfigError(f"{WHERE}.threshold: {t} is at most half of the {n_trainers} label trainers; need "
                          f"t > n/2 (two disjoint survivor sets could both reconstruct), i.e. t >= {n_trainers // 2 + 1}")
    if min_parties is None:
        return t
    if isinstance(min_parties, bool) or not isinstance(min_parties, int) or not t <= min_parties <= n_trainers:
        raise ConfigError(f"train_params.aggregation.min_parties: expected an integer in [{t}, {n_trainers}] "
                          f"(threshold .. label trainers), got {min_parties!r}")
    return min_parties
