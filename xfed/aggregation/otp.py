"""One-time-pad secure aggregation: label trainers upload fixed-point tensors masked with pairwise pads.

Per stage the label trainers agree pad streams pairwise (`keyexchange`). Each round every label
trainer encodes its tensors and its weight (the scalar `__weight__`, so weights are never in the
clear) as round(w * x * 2^frac_bits) mod 2^bits and adds/subtracts its pads; the root sums every
label trainer's masked dict (the pads cancel only in the full sum), decodes, adds its own tensors
in the clear when it trains, divides by the total weight (FedAvg) and broadcasts the float32 mean.
All label trainers must take part in every round: pads are consumed in lock step.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np

from xfed.aggregation.base import WEIGHT_KEY, LeafBase, RootBase, check_same_layout, encode
from xfed.aggregation.context import AggregationContext
from xfed.aggregation.keyexchange import OtpSettings, agree_pad_streams
from xfed.aggregation.settings import Otp
from xfed.crypto import unmask_sum
from xfed.crypto.fixedpoint import check_params, encoded_shape
from xfed.errors import FrameError, JobError, blaming


def _session(ctx: AggregationContext) -> str:
    return f"{ctx.job_id}/{ctx.stage_id}/{ctx.attempt}"


def _too_few_warning(n: int) -> str:
    return (f"encryption otp with {n} masked part{'y' if n == 1 else 'ies'}: masking hides nothing from the "
            "aggregator (the sum of one party is that party's update); running anyway")


class OtpLeaf(LeafBase):
    def __init__(self, ctx: AggregationContext, otp: Otp, **kw: Any) -> None:
        super().__init__(ctx, **kw)
        self.settings = OtpSettings.of(otp)
        self.peers = [t for t in self.trainers if t != self.node_id]
        self.streams: dict = {}
        self.setup_ms = 0.0
        self._ready = False

    def setup(self) -> None:
        """Pairwise DH with the other label trainers (fresh keys per job/stage/attempt)."""
        t0 = time.perf_counter()
        if self.node_id not in self.trainers:
            raise JobError(f"{self.node_id} is not a label trainer of this job (trainers: {', '.join(self.trainers)})")
        if len(self.trainers) < 2:
            self.warn(_too_few_warning(len(self.trainers)))
        identities = dict(self.ctx.fed.identities) if self.ctx.fed is not None else {}
        self.streams = agree_pad_streams(self.comm, self.peers, self.settings, session=_session(self.ctx),
                                         identity_key=self.ctx.identity_key,
                                         identities=identities, timeout=self.timeout) if self.peers else {}
        self.setup_ms = round((time.perf_counter() - t0) * 1000, 3)
        self._ready = True

    def aggregate(self, round_idx: int, tensors: Mapping[str, Any], weight: float) -> dict[str, np.ndarray]:
        """Mask (tensors, weight), upload, wait for the round's mean (float32 dict)."""
        if not self._ready:
            raise JobError(f"{self.node_id}: otp aggregation used before setup()")
        return self._round(round_idx, tensors, weight, self._mask)

    def _mask(self, named: dict[str, np.ndarray], w: float, who: str, st: Any) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        # thread-safe (crypto locks its warm buffers), so parties may run as threads of one process
        masked = encode(named, w, who, bits=self.settings.bits, frac_bits=self.settings.frac_bits,
                        n_parties=len(self.trainers), self_id=self.node_id, peer_streams=self.streams)
        st.mask_ms = round((time.perf_counter() - t0) * 1000, 3)
        return masked


class OtpRoot(RootBase):
    def __init__(self, ctx: AggregationContext, otp: Otp, **kw: Any) -> None:
        super().__init__(ctx, **kw)
        self.settings = OtpSettings.of(otp)

    def setup(self) -> None:
        """The root takes no part in the key exchange; it only warns when masking hides nothing."""
        if len(self.trainers) < 2:
            self.warn(_too_few_warning(len(self.trainers)))

    def aggregate(self, round_idx: int, own_tensors: Mapping[str, Any] | None,
                  own_weight: float = 0.0) -> dict[str, np.ndarray]:
        """Gather every label trainer's masked dict, unmask the sum, add own tensors, broadcast the mean."""
        return self._round(round_idx, own_tensors, own_weight, lambda got: self._unmask(round_idx, got))

    def _unmask(self, round_idx: int, got: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], float]:
        bits = self.settings.bits
        if self.layout is not None:  # what this root broadcast, as every leaf must have masked it
            reference = {k: np.broadcast_to(np.uint64(0), encoded_shape(v.shape, bits)) for k, v in self.layout.items()}
            reference[WEIGHT_KEY] = np.broadcast_to(np.uint64(0), encoded_shape((), bits))
        else:  # a caller that never broadcast: the first upload is the reference
            reference = got[self.trainers[0]].tensors
            if WEIGHT_KEY not in reference:
                raise blaming(FrameError(f"round {round_idx} upload from {self.trainers[0]}: missing {WEIGHT_KEY!r}"),
                              self.trainers[0])
        for node in self.trainers:
            try:
                check_same_layout(reference, got[node].tensors, f"round {round_idx} masked upload from {node}",
                                  dtype=np.dtype(np.uint64))
            except FrameError as err:
                raise blaming(err, node) from None
        try:
            sums = unmask_sum([got[n].tensors for n in self.trainers], bits=self.settings.bits,
                              frac_bits=self.settings.frac_bits)
        except ValueError as exc:
            raise FrameError(f"round {round_idx}: masked uploads do not fit together: {exc}") from None
        total = float(sums.pop(WEIGHT_KEY))
        # pads that do not cancel leave a uniformly random sum: the weight decodes negative, or above
        # any real total (a quarter of the representable range), 7 times out of 8
        frac_bits = check_params(bits, self.settings.frac_bits)
        if not np.isfinite(total) or total < 0 or total > 2.0 ** (bits - 1 - frac_bits - 2):
            raise FrameError(
                f"round {round_idx}: the masked uploads do not cancel (the total weight decodes to {total:.6g}): "
                "an upload was replayed from another round, altered, or masked with other pads; pin every "
                "node's identity in fed_conf.json so uploads are signed and bound to their round")
        return sums, total
