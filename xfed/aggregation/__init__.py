"""How the sum of the parties' adapters is formed (plain | otp) over a Comm; the strategy averages it.

    leaf = make_leaf(ctx, {"otp": {...}})   # label trainer
    root = make_root(ctx, {"plain": {}})    # assist trainer
"""

from __future__ import annotations

from typing import Any, Mapping

from xfed.aggregation.base import WEIGHT_KEY, LeafBase, RootBase, RoundStats, tensors_digest
from xfed.aggregation.keyexchange import OtpSettings, exchange_publics
from xfed.aggregation.otp import OtpLeaf, OtpRoot
from xfed.aggregation.plain import PlainLeaf, PlainRoot
from xfed.aggregation.secagg import SecAggLeaf
from xfed.aggregation.secagg_root import SecAggRoot
from xfed.aggregation.strategy import FedAvg, Strategy
from xfed.errors import ConfigError

__all__ = ["make_leaf", "make_root", "encryption_kind", "PlainLeaf", "PlainRoot", "OtpLeaf", "OtpRoot",
           "SecAggLeaf", "SecAggRoot", "LeafBase", "RootBase", "RoundStats", "OtpSettings", "exchange_publics", "FedAvg",
           "Strategy", "WEIGHT_KEY", "tensors_digest"]


def encryption_kind(encryption: Any) -> tuple[str, dict[str, Any]]:
    """("plain" | "otp", options) from the stage's `encryption` ({"otp": {...}} / {"plain": {}} / a name)."""
    if encryption is None:
        return "plain", {}
    if isinstance(encryption, str):
        encryption = {encryption: {}}
    if hasattr(encryption, "model_dump"):
        encryption = encryption.model_dump(exclude_none=True)
    if not isinstance(encryption, Mapping):
        raise ConfigError(f"train_params.encryption: expected an object, got {type(encryption).__name__}")
    kinds = [k for k in encryption if encryption[k] is not None]
    if len(kinds) != 1 or kinds[0] not in ("plain", "otp"):
        raise ConfigError(f"train_params.encryption: exactly one of otp, plain is required, got {sorted(kinds)}")
    options = encryption[kinds[0]] or {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"train_params.encryption.{kinds[0]}: expected an object")
    return kinds[0], dict(options)


def make_leaf(ctx: Any, encryption: Any, *, min_parties: int | None = None, **kw: Any) -> LeafBase:
    """The label trainer's aggregator. kw: strategy=, timeout= (seconds per wait; default the Comm's).

    `otp` with a `dropout` block is dropout-tolerant secure aggregation (secagg); min_parties
    (aggregation.min_parties) only applies there."""
    kind, options = encryption_kind(encryption)
    if kind == "otp" and options.get("dropout") is not None:
        return SecAggLeaf(ctx, options, min_parties=min_parties, **kw)
    return OtpLeaf(ctx, options, **kw) if kind == "otp" else PlainLeaf(ctx, **kw)


def make_root(ctx: Any, encryption: Any, *, min_parties: int | None = None, **kw: Any) -> RootBase:
    """The assist trainer's aggregator. kw: strategy= (default FedAvg), timeout=."""
    kind, options = encryption_kind(encryption)
    if kind == "otp" and options.get("dropout") is not None:
        return SecAggRoot(ctx, options, min_parties=min_parties, **kw)
    return OtpRoot(ctx, options, **kw) if kind == "otp" else PlainRoot(ctx, options, **kw)
