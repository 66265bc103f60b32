"""Plain aggregation: each label trainer sends its tensors and weight in the clear; the root averages.

For a trusted aggregator or debugging: the assist trainer sees every party's update. The weight
still travels as a tensor entry (`__weight__`), so plain and otp rounds have the same shape on the wire.

The root forms the sum on the same fixed-point grid as otp (`key_bitlength` 128 by default, or 64),
with the same encode/sum/decode code, just without pads. So the sum is exact and independent of the
order uploads arrive in, and a plain run equals an otp run with the same `key_bitlength` bit for bit
(pads cancel exactly modulo 2^bits) — training amplifies even one-ulp differences between rounds.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from xfed.aggregation.base import (
    WEIGHT_KEY,
    LeafBase,
    RootBase,
    check_same_layout,
    check_weight,
    encode,
    layout_of,
)
from xfed.aggregation.context import AggregationContext
from xfed.aggregation.settings import Plain
from xfed.crypto.fixedpoint import default_frac_bits
from xfed.crypto.running_sum import RunningSum
from xfed.errors import FrameError, XfedError, blaming


class PlainLeaf(LeafBase):
    def aggregate(self, round_idx: int, tensors: Mapping[str, Any], weight: float) -> dict[str, np.ndarray]:
        """Upload (tensors, weight), wait for the round's mean (float32 dict)."""
        return self._round(round_idx, tensors, weight, lambda named, w, who, st: {**named, WEIGHT_KEY: np.float64(w)})


class PlainRoot(RootBase):
    one_copy_mean = True  # every label trainer uploads every round, so each reads every mean

    def __init__(self, ctx: AggregationContext, plain: Plain, **kw: Any) -> None:
        super().__init__(ctx, **kw)
        self.bits = plain.key_bitlength  # checked once, by settings.Plain
        self.frac_bits = default_frac_bits(self.bits)

    def aggregate(self, round_idx: int, own_tensors: Mapping[str, Any] | None,
                  own_weight: float = 0.0) -> dict[str, np.ndarray]:
        """Add each label trainer's tensors into the running sum as they arrive, add the root's own
        (if it trains), broadcast the mean."""
        return self._round(round_idx, own_tensors, own_weight, PlainUploads(self, round_idx))


class PlainUploads:
    """One round's clear uploads, encoded on otp's fixed-point grid and summed as they arrive."""

    def __init__(self, root: PlainRoot, round_idx: int) -> None:
        self.root, self.round_idx = root, round_idx
        self.reference = root.layout  # what the root broadcast; without it (a caller that never did) the first upload
        self.sum = RunningSum(bits=root.bits, frac_bits=root.frac_bits)

    def add(self, node: str, tensors: Mapping[str, np.ndarray]) -> None:
        tensors = dict(tensors)
        who = f"round {self.round_idx} upload from {node}"
        raw_w = tensors.pop(WEIGHT_KEY, None)
        if raw_w is None or raw_w.shape != ():
            raise blaming(FrameError(f"{who}: missing the scalar {WEIGHT_KEY!r}"), node)
        try:
            w = check_weight(raw_w, who, allow_zero=True)
            if self.reference is None:
                self.reference = layout_of(tensors)
            check_same_layout(self.reference, tensors, who)
            # otp's encoding, without pads: the same integers an otp leaf would mask
            encoded = encode(tensors, w, who, bits=self.root.bits, frac_bits=self.root.frac_bits,
                             n_parties=len(self.root.trainers), self_id=node, peer_streams={}, bad_input=FrameError)
        except XfedError as err:
            raise blaming(err, node) from None
        self.sum.add(encoded, adopt=True)

    def result(self) -> tuple[dict[str, np.ndarray], float]:
        sums = self.sum.decode()
        return sums, float(sums.pop(WEIGHT_KEY))
