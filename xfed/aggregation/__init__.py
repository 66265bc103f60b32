"""How the sum of the parties' adapters is formed (plain | otp) over a Comm; the strategy averages it.

    leaf = make_leaf(ctx, params.encryption)   # label trainer; an Encryption model (or its XFL block)
    root = make_root(ctx, params.encryption)   # assist trainer
"""

from __future__ import annotations

from typing import Any, Mapping

from xfed.aggregation.base import WEIGHT_KEY, LeafBase, RootBase, RoundStats, tensors_digest
from xfed.aggregation.context import AggregationContext
from xfed.aggregation.keyexchange import OtpSettings, exchange_publics
from xfed.aggregation.otp import OtpLeaf, OtpRoot
from xfed.aggregation.plain import PlainLeaf, PlainRoot
from xfed.aggregation.secagg import SecAggLeaf
from xfed.aggregation.secagg_root import SecAggRoot
from xfed.aggregation.settings import Encryption, Otp, Plain, encryption_of
from xfed.aggregation.strategy import FedAvg, Strategy

__all__ = ["make_leaf", "make_root", "encryption_of", "Encryption", "Otp", "Plain", "PlainLeaf", "PlainRoot",
           "OtpLeaf", "OtpRoot", "SecAggLeaf", "SecAggRoot", "LeafBase", "RootBase", "RoundStats", "OtpSettings",
           "exchange_publics", "FedAvg", "Strategy", "WEIGHT_KEY", "tensors_digest"]


def make_leaf(ctx: AggregationContext, encryption: Encryption | Mapping[str, Any] | None, *, min_parties: int | None = None,
              **kw: Any) -> LeafBase:
    """The label trainer's aggregator. kw: strategy=, timeout= (seconds per wait; default the Comm's).

    `otp` with a `dropout` block is dropout-tolerant secure aggregation (secagg); min_parties
    (aggregation.min_parties) only applies there."""
    enc = encryption_of(encryption)
    if enc.otp is not None and enc.otp.dropout is not None:
        return SecAggLeaf(ctx, enc.otp, min_parties=min_parties, **kw)
    return OtpLeaf(ctx, enc.otp, **kw) if enc.otp is not None else PlainLeaf(ctx, **kw)


def make_root(ctx: AggregationContext, encryption: Encryption | Mapping[str, Any] | None, *, min_parties: int | None = None,
              **kw: Any) -> RootBase:
    """The assist trainer's aggregator. kw: strategy= (default FedAvg), timeout=."""
    enc = encryption_of(encryption)
    if enc.otp is not None and enc.otp.dropout is not None:
        return SecAggRoot(ctx, enc.otp, min_parties=min_parties, **kw)
    if enc.otp is not None:
        return OtpRoot(ctx, enc.otp, **kw)
    assert enc.plain is not None  # Encryption holds exactly one
    return PlainRoot(ctx, enc.plain, **kw)
