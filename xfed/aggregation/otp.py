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
from xfed.aggregation.keyexchange import OtpSettings, agree_pad_streams, pad_peers
from xfed.aggregation.settings import Otp
from xfed.crypto.fixedpoint import check_params, encoded_shape
from xfed.crypto.running_sum import RunningSum
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
        self.peers = [t for t in self.trainers if t != self.node_id]  # pad peers: set in setup()
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
        if len(self.trainers) > 1:
            self.peers = pad_peers(self.trainers, self.node_id, self.settings.neighbours)
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
    one_copy_mean = True  # every label trainer uploads every round, so each reads every mean

    def __init__(self, ctx: AggregationContext, otp: Otp, **kw: Any) -> None:
        super().__init__(ctx, **kw)
        self.settings = OtpSettings.of(otp)

    def setup(self) -> None:
        """The root takes no part in the key exchange; it only warns when masking hides nothing."""
        if len(self.trainers) < 2:
            self.warn(_too_few_warning(len(self.trainers)))

    def aggregate(self, round_idx: int, own_tensors: Mapping[str, Any] | None,
                  own_weight: float = 0.0) -> dict[str, np.ndarray]:
        """Add each label trainer's masked dict into the running sum as it arrives, unmask the sum,
        add own tensors, broadcast the mean."""
        return self._round(round_idx, own_tensors, own_weight, MaskedUploads(self, round_idx))


class MaskedUploads:
    """One round's masked uploads summed mod 2^bits as they arrive (the pads cancel in the full sum)."""

    def __init__(self, root: OtpRoot, round_idx: int) -> None:
        self.root, self.round_idx = root, round_idx
        self.bits, self.frac_bits = root.settings.bits, root.settings.frac_bits
        self.sum = RunningSum(bits=self.bits, frac_bits=self.frac_bits)
        self.reference: dict[str, np.ndarray] | None = None
        if root.layout is not None:  # what the root broadcast, as every leaf must have masked it
            self.reference = {k: np.broadcast_to(np.uint64(0), encoded_shape(v.shape, self.bits))
                              for k, v in root.layout.items()}
            self.reference[WEIGHT_KEY] = np.broadcast_to(np.uint64(0), encoded_shape((), self.bits))

    def add(self, node: str, tensors: Mapping[str, np.ndarray]) -> None:
        what = f"round {self.round_idx} masked upload from {node}"
        try:
            if self.reference is None:  # a caller that never broadcast: the first upload is the reference
                if WEIGHT_KEY not in tensors:
                    raise FrameError(f"{what}: missing {WEIGHT_KEY!r}")
                self.reference = {k: np.broadcast_to(np.uint64(0), np.shape(v)) for k, v in tensors.items()}
            check_same_layout(self.reference, tensors, what, dtype=np.dtype(np.uint64))
            self.sum.add(tensors, adopt=True)
        except ValueError as exc:
            raise blaming(FrameError(f"{what}: {exc}"), node) from None
        except FrameError as err:
            raise blaming(err, node) from None

    def result(self) -> tuple[dict[str, np.ndarray], float]:
        sums = self.sum.decode()
        total = float(sums.pop(WEIGHT_KEY))
        # pads that do not cancel leave a uniformly random sum: the weight decodes negative, or above
        # any real total (a quarter of the representable range), 7 times out of 8
        frac_bits = check_params(self.bits, self.frac_bits)
        if not np.isfinite(total) or total < 0 or total > 2.0 ** (self.bits - 1 - frac_bits - 2):
            raise FrameError(
                f"round {self.round_idx}: the masked uploads do not cancel (the total weight decodes to {total:.6g}): "
                "an upload was replayed from another round, altered, or masked with other pads; pin every "
                "node's identity in fed_conf.json so uploads are signed and bound to their round")
        return sums, total
