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
from xfed.crypto.otp import unmask_sum
from xfed.errors import FrameError, XfedError, blaming


class PlainLeaf(LeafBase):
    def aggregate(self, round_idx: int, tensors: Mapping[str, Any], weight: float) -> dict[str, np.ndarray]:
        """Upload (tensors, weight), wait for the round's mean (float32 dict)."""
        return self._round(round_idx, tensors, weight, lambda named, w, who, st: {**named, WEIGHT_KEY: np.float64(w)})


class PlainRoot(RootBase):
    def __init__(self, ctx: AggregationContext, plain: Plain, **kw: Any) -> None:
        super().__init__(ctx, **kw)
        self.bits = plain.key_bitlength  # checked once, by settings.Plain
        self.frac_bits = default_frac_bits(self.bits)

    def aggregate(self, round_idx: int, own_tensors: Mapping[str, Any] | None,
                  own_weight: float = 0.0) -> dict[str, np.ndarray]:
        """Gather every label trainer's tensors, add the root's own (if it trains), broadcast the mean."""
        return self._round(round_idx, own_tensors, own_weight, lambda got: self._sum(round_idx, got))

    def _sum(self, round_idx: int, got: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], float]:
        reference = self.layout  # what this root broadcast; without it (a caller that never did) the first upload
        encoded: list[dict[str, np.ndarray]] = []
        for node in self.trainers:
            tensors = dict(got[node].tensors)
            who = f"round {round_idx} upload from {node}"
            raw_w = tensors.pop(WEIGHT_KEY, None)
            if raw_w is None or raw_w.shape != ():
                raise blaming(FrameError(f"{who}: missing the scalar {WEIGHT_KEY!r}"), node)
            try:
                w = check_weight(raw_w, who, allow_zero=True)
                if reference is None:
                    reference = layout_of(tensors)
                check_same_layout(reference, tensors, who)
            except XfedError as err:
                raise blaming(err, node) from None
            # otp's encoding, without pads: the same integers an otp leaf would mask
            try:
                encoded.append(encode(tensors, w, who, bits=self.bits, frac_bits=self.frac_bits,
                                      n_parties=len(self.trainers), self_id=node, peer_streams={},
                                      bad_input=FrameError))
            except FrameError as err:
                raise blaming(err, node) from None
        sums = unmask_sum(encoded, bits=self.bits, frac_bits=self.frac_bits)
        return sums, float(sums.pop(WEIGHT_KEY))
