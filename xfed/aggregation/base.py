"""What the plain and one-time-pad aggregators share: settings, tags, the initial broadcast, per-round stats.

A *leaf* is a label trainer: it uploads its tensors each round and receives the global mean.
The *root* is the assist trainer: it forms the weighted sum (plain or unmasked), hands it to the
strategy (FedAvg) and broadcasts the float32 result. The root may also train: its own tensors are
added in the clear (it is the aggregator; masking them from itself would hide nothing).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Protocol

import numpy as np

from xfed.aggregation.context import AggregationContext
from xfed.aggregation.strategy import FedAvg, Strategy
from xfed.crypto import mask
from xfed.errors import ConfigError, FrameError, JobError

WEIGHT_KEY = "__weight__"   # the scalar weight travels with the tensors (masked under otp)
TAG_INIT = "agg/init"


def tag_up(round_idx: int) -> str:
    return f"agg/{int(round_idx)}/up"


def tag_down(round_idx: int) -> str:
    return f"agg/{int(round_idx)}/down"


@dataclass
class RoundStats:
    """One round as one party saw it (milliseconds and bytes); `last_round_stats` holds it as a dict."""

    round: int = -1
    bytes_sent: int = 0
    bytes_received: int = 0
    mask_ms: float = 0.0
    unmask_ms: float = 0.0
    wait_ms: float = 0.0
    total_ms: float = 0.0
    parties: int = 0


def as_numpy(tensors: Mapping[str, Any], what: str) -> dict[str, np.ndarray]:
    """name -> numpy array (torch CPU tensors convert through np.asarray); refuses the reserved name."""
    if not isinstance(tensors, Mapping):
        raise JobError(f"{what}: expected a dict of named tensors, got {type(tensors).__name__}")
    out = {}
    for name, value in tensors.items():
        if name == WEIGHT_KEY:
            raise JobError(f"{what}: tensor name {WEIGHT_KEY!r} is reserved for the aggregation weight")
        if hasattr(value, "detach"):  # a torch tensor; this package does not import torch
            value = value.detach().cpu().numpy()
        out[str(name)] = np.asarray(value)
    return out


def check_weight(weight: Any, who: str, allow_zero: bool) -> float:
    try:
        w = float(weight)
    except (TypeError, ValueError):
        raise JobError(f"{who}: aggregation weight {weight!r} is not a number") from None
    if not math.isfinite(w) or w < 0 or (w == 0 and not allow_zero):
        raise JobError(f"{who}: aggregation weight must be finite and {'>= 0' if allow_zero else '> 0'}, got {w}")
    return w


def check_same_layout(reference: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], who: str,
                      *, dtype: np.dtype | None = None) -> None:
    """FrameError naming `who` and the tensor unless `got` has exactly reference's names and shapes."""
    if set(got) != set(reference):
        missing, extra = sorted(set(reference) - set(got)), sorted(set(got) - set(reference))
        raise FrameError(f"{who}: tensors differ (missing {missing[:5]}, unexpected {extra[:5]})")
    for name, ref in reference.items():
        arr = got[name]
        if arr.shape != ref.shape:
            raise FrameError(f"{who}: tensor {name!r} has shape {arr.shape}, expected {ref.shape}")
        if dtype is not None and arr.dtype != dtype:
            raise FrameError(f"{who}: tensor {name!r} has dtype {arr.dtype}, expected {dtype}")


def tensors_digest(tensors: Mapping[str, np.ndarray]) -> str:
    """sha256 (32 hex digits) of named tensors: names, dtypes, shapes and bytes, in name order.

    Every party ends a round holding the same aggregate (the root's float32 mean, byte for byte), so
    the digest of the last one is the same on every node: the evidence a `done` event carries."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        h.update(f"{name}\0{arr.dtype.str}\0{arr.shape}\0".encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:32]


def layout_of(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Names and shapes of `tensors` as zero-copy stand-ins (what check_same_layout reads)."""
    return {k: np.broadcast_to(np.float32(0), np.shape(v)) for k, v in tensors.items()}


def encode(tensors: Mapping[str, np.ndarray], weight: float, who: str, *, bits: int, frac_bits: int,
           n_parties: int, self_id: str, peer_streams: Mapping[str, Any], bad_input: type = JobError,
           ) -> dict[str, np.ndarray]:
    """otp's fixed-point encoding of (tensors, weight), masked with `peer_streams` (none: plain's sum).

    The weight rides as the scalar WEIGHT_KEY (mask scales it by `weight` like every tensor).
    `bad_input` is the error for tensors that do not encode: JobError for a party's own, FrameError
    for an upload the root received."""
    try:
        return mask({**tensors, WEIGHT_KEY: np.float64(1.0)}, bits=bits, frac_bits=frac_bits, weight=weight,
                    n_parties=n_parties, self_id=self_id, peer_streams=peer_streams)
    except OverflowError as exc:
        raise JobError(f"{who}: {exc} (use key_bitlength 128 or weighting: uniform)") from None
    except ValueError as exc:
        raise bad_input(f"{who}: {exc}") from None


def _trainers(ctx: AggregationContext) -> list[str]:
    trainers = sorted(ctx.trainer_ids)
    if not trainers:
        raise ConfigError("fed_info.trainer lists no label trainers: nothing to aggregate")
    return trainers


class UploadSum(Protocol):
    """A root's running sum of one round's uploads (plain or masked)."""

    def add(self, node: str, tensors: Mapping[str, np.ndarray]) -> None:
        """Check `node`'s upload (FrameError blaming it) and add it into the sum."""

    def result(self) -> tuple[dict[str, np.ndarray], float]:
        """(weighted sums as float64, total weight) once every upload is in."""


class _Party:
    """State common to leaves and roots: the ctx, the Comm, the stats of the last round."""

    role = "party"

    def __init__(self, ctx: AggregationContext, *, strategy: Strategy | None = None,
                 timeout: float | None = None) -> None:
        self.ctx = ctx
        self.comm = ctx.comm
        self.node_id = ctx.node_id
        self.trainers = _trainers(ctx)
        self.assist_id = ctx.assist_id
        self.strategy = strategy or FedAvg()
        self.timeout = timeout  # None: the Comm's own timeout
        self.last_round_stats: dict[str, Any] = {}
        self.last_digest: str | None = None  # tensors_digest of the last aggregate (same on every party)
        self._mark: tuple[int, int, float, float] | None = None
        self._stats = RoundStats()

    def _begin(self, round_idx: int) -> RoundStats:
        s = self.comm.stats
        self._mark = (s.bytes_sent, s.bytes_received, s.wait_s, time.perf_counter())
        self._stats = RoundStats(round=int(round_idx))
        return self._stats

    def _end(self) -> None:
        s, st = self.comm.stats, self._stats
        if self._mark is not None:
            sent, received, wait_s, t0 = self._mark
            st.bytes_sent, st.bytes_received = s.bytes_sent - sent, s.bytes_received - received
            st.wait_ms = round((s.wait_s - wait_s) * 1000, 3)
            st.total_ms = round((time.perf_counter() - t0) * 1000, 3)
        self.last_round_stats = asdict(st)

    def warn(self, message: str) -> None:
        self.ctx.report("warning", {"message": message, "node": self.node_id})


class LeafBase(_Party):
    """A label trainer's side: receive the initial tensors, then upload + receive the mean each round."""

    role = "leaf"

    def __init__(self, ctx: AggregationContext, **kw: Any) -> None:
        super().__init__(ctx, **kw)
        if not self.assist_id:
            raise ConfigError("fed_info.assist_trainer is missing: a label trainer needs an aggregator")
        self._layout: dict[str, np.ndarray] | None = None

    def setup(self) -> None:
        """Nothing to agree for plain aggregation; otp overrides it with the key exchange."""

    def receive_initial(self) -> dict[str, np.ndarray]:
        msg = self.comm.recv(self.assist_id, TAG_INIT, timeout=self.timeout)
        self._layout = {k: v for k, v in msg.tensors.items()}
        return dict(msg.tensors)

    def _round(self, round_idx: int, tensors: Mapping[str, Any], weight: float,
               make_upload: Any) -> dict[str, np.ndarray]:
        """One leaf round: check (tensors, weight), `make_upload(named, weight, who, stats) -> dict`
        (clear or masked: the only part that differs), upload it, receive and check the mean."""
        st = self._begin(round_idx)
        who = f"{self.node_id}: round {round_idx}"
        named = as_numpy(tensors, who)
        w = check_weight(weight, who, allow_zero=True)
        self.comm.send(self.assist_id, tag_up(round_idx), make_upload(named, w, who, st))
        msg = self.comm.recv(self.assist_id, tag_down(round_idx), timeout=self.timeout)
        check_same_layout(named, msg.tensors, f"round {round_idx} aggregate from {self.assist_id}",
                          dtype=np.dtype(np.float32))
        st.parties = len(self.trainers)
        self.last_digest = tensors_digest(msg.tensors)
        self._end()
        return dict(msg.tensors)


class RootBase(_Party):
    """The assist trainer's side: broadcast the initial tensors, then sum, finalize and broadcast."""

    role = "root"

    def setup(self) -> None:
        """Nothing to agree for plain aggregation; otp overrides it (the root takes no part in DH)."""

    # the mean is written to Redis once and every label trainer reads that copy (Comm.publish), which
    # needs every receiver to read round r's mean before round r+1's is published: true where every
    # trainer uploads every round (plain, otp); the secagg root, whose rounds may leave a party out,
    # publishes to the round's contributors and sends the others a copy each (SecAggRoot._send_mean)
    one_copy_mean = False

    # names and shapes the root itself broadcast: every upload is checked against these, so the party
    # whose upload is wrong is the one named (not whichever upload happened to come first)
    layout: dict[str, np.ndarray] | None = None

    def broadcast_initial(self, tensors: Mapping[str, Any]) -> None:
        """Send the starting tensors to every label trainer, so all parties start identical."""
        initial = as_numpy(tensors, f"{self.node_id}: initial tensors")
        self.layout = layout_of(initial)
        self.strategy.start(initial)
        self.comm.broadcast(self.trainers, TAG_INIT, initial)

    def _round(self, round_idx: int, own_tensors: Mapping[str, Any] | None, own_weight: float,
               uploads: UploadSum) -> dict[str, np.ndarray]:
        """One root round: add each upload into `uploads` as it arrives (plain or masked: the only
        part that differs) and drop it, so the root holds the running sum and about one upload
        whatever the number of parties, and sums while later uploads are still on the wire; then
        add the root's own tensors and broadcast the mean."""
        st = self._begin(round_idx)
        who = f"{self.node_id}: round {round_idx}"
        own = as_numpy(own_tensors, who) if own_tensors is not None else None
        own_w = check_weight(own_weight, who, allow_zero=True)
        busy = 0.0
        for node, msg in self.comm.arrivals(self.trainers, tag_up(round_idx), timeout=self.timeout, one_by_one=True):
            t0 = time.perf_counter()
            uploads.add(node, msg.tensors)
            del msg  # the next upload is read without this one in memory
            busy += time.perf_counter() - t0
        t0 = time.perf_counter()
        sums, total = uploads.result()
        st.unmask_ms = round((busy + time.perf_counter() - t0) * 1000, 3)
        mean = self._finish(round_idx, sums, total, own, own_w)
        st.parties = len(self.trainers) + (1 if own is not None and own_w > 0 else 0)
        self._end()
        return mean

    def _finish(self, round_idx: int, weighted_sum: dict[str, np.ndarray], total_weight: float,
                own: Mapping[str, np.ndarray] | None, own_weight: float,
                meta: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        if own is not None and own_weight > 0:
            check_same_layout(weighted_sum, own, f"{self.node_id}: own tensors of round {round_idx}")
            for name, value in own.items():
                weighted_sum[name] += own_weight * value.astype(np.float64, copy=False)
            total_weight += own_weight
        mean = self.strategy.finalize(round_idx, weighted_sum, total_weight)
        self._send_mean(round_idx, mean, meta)
        self.last_digest = tensors_digest(mean)
        return mean

    def _send_mean(self, round_idx: int, mean: dict[str, np.ndarray], meta: Mapping[str, Any] | None) -> None:
        """To every label trainer: one published copy (`one_copy_mean`) or a copy each."""
        send = self.comm.publish if self.one_copy_mean else self.comm.broadcast
        send(self.trainers, tag_down(round_idx), mean, meta)
