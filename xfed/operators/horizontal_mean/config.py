"""`train_info.train_params` of the horizontal_mean operator (pydantic only, no numpy/torch)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ENCRYPTIONS = ("plain", "otp")


class Params(BaseModel):
    """Rounds of a weighted mean of seeded random vectors.

    rounds: aggregation rounds (default 3). dim: vector length (default 16). seed: base seed; a
    node's vector for round r is drawn from (seed, node id, r), so any node can recompute every
    contribution and check the aggregate. weighting: "uniform" (every contributor weight 1) or
    "index" (weight 1 + the contributor's position among the trainers, to exercise weighted means).
    assist_contributes: the assist trainer adds a vector of its own. encryption: XFL's
    {"plain": {}} or {"otp": {...}} block, handed to xfed.aggregation unchanged. round_delay_s:
    sleep before each round (lets tests act mid-job). tolerance: max |aggregate - expected|.
    timeout_s: how long a node waits for a peer in one step.
    The assist trainer's values are authoritative; a label trainer's differing values are reported
    as warnings and replaced.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    rounds: int = Field(3, ge=1, le=100_000)
    dim: int = Field(16, ge=1, le=50_000_000)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    weighting: Literal["uniform", "index"] = "uniform"
    assist_contributes: bool = False
    encryption: dict[str, Any] = Field(default_factory=lambda: {"plain": {}})
    round_delay_s: float = Field(0.0, ge=0, le=3600)
    tolerance: float = Field(1e-4, gt=0)
    timeout_s: float = Field(120.0, gt=0, le=86_400)

    @field_validator("encryption")
    @classmethod
    def _encryption(cls, v: dict[str, Any]) -> dict[str, Any]:
        if len(v) != 1 or next(iter(v)) not in ENCRYPTIONS:
            raise ValueError(f"encryption must have exactly one key out of {', '.join(ENCRYPTIONS)}, "
                             f"got {sorted(v) or 'none'}")
        return v

    @property
    def shared(self) -> dict[str, Any]:
        """The values every node must use (the assist trainer sends its own to the trainers)."""
        return self.model_dump(exclude={"round_delay_s", "timeout_s"})
