"""One-time-pad masking of named tensors for secure aggregation, and the aggregator's unmasked sum.

Key derivation (one pad stream per pair of nodes and per session):
  session          = f"{job_id}/{stage_id}/{attempt}"   (supplied by the caller)
  entropy input    = the pair's Diffie-Hellman secret (big-endian, length of p)
  nonce            = session as UTF-8
  personalization  = b"xfed/otp-pad/v1" || lp(lower id) || lp(higher id) || u16(lane) || u16(lanes)
with lp(b) = u16 big-endian length || b, ids as UTF-8 and "lower" in Python string order.
A stream is `lanes` independently instantiated DRBGs (sub-streams) of the chosen csprng
(hmac_drbg with method sha1...sha512, or ctr_drbg = CTR_DRBG/AES-256 with the derivation
function). A request for n pad words is split into `lanes` contiguous runs, run c being words
[c*n//lanes, (c+1)*n//lanes), drawn from lane c with DRBG `fill` (64 KiB NIST requests; the
bytes read as little-endian uint64). Lanes let one pair's pad be generated on several cores;
both ends of a pair must use the same `lanes`. Two pairs, jobs, stages or attempts never
share a pad stream, because the nonce or personalization differs.

Masking (per round, per party): tensors in sorted-name order are encoded to fixed point
(`fixedpoint.encode`, weighted, overflow-checked for n_parties) into one flat word buffer; for
each peer the next len(buffer) pad words of that pair's stream are added if this party's id is
the lower of the two, subtracted otherwise. Every pair's pads cancel in the sum of all parties.
"""

from __future__ import annotations

import itertools
import math
import threading
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from xfed.crypto import fixedpoint
from xfed.crypto.drbg import CtrDrbg, HmacDrbg, normalize_hash_name
from xfed.crypto.pad_workers import available_cores, get_pad_workers

__all__ = [
    "PROTOCOL_LABEL",
    "DEFAULT_LANES",
    "CSPRNGS",
    "PadStream",
    "pad_stream",
    "pad_words",
    "derivation_inputs",
    "mask",
    "unmask_sum",
    "sign_for",
    "add_pads",
]

PROTOCOL_LABEL = b"xfed/otp-pad/v1"
DEFAULT_LANES = 4  # sub-streams per pair: enough to balance 2-8 cores for any number of peers
CSPRNGS = ("hmac_drbg", "ctr_drbg")
# Below this many pad bytes per round, process start/hand-over costs more than it saves.
_PARALLEL_MIN_BYTES = 4 << 20


def _lp(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError("node id longer than 65535 bytes")
    return len(data).to_bytes(2, "big") + data


def derivation_inputs(
    secret: bytes, *, session: str, node_a: str, node_b: str, lane: int = 0, lanes: int = DEFAULT_LANES
) -> tuple[bytes, bytes, bytes]:
    """(entropy, nonce, personalization) of one lane of the pad stream between node_a and node_b."""
    if not isinstance(secret, (bytes, bytearray)) or len(secret) < 32:
        raise ValueError("pad stream secret must be at least 32 bytes (a Diffie-Hellman shared secret)")
    if not isinstance(session, str) or not session:
        raise ValueError("pad stream session must be a non-empty string such as 'job/stage/attempt'")
    if not isinstance(node_a, str) or not isinstance(node_b, str) or not node_a or not node_b:
        raise ValueError("pad stream node ids must be non-empty strings")
    if node_a == node_b:
        raise ValueError(f"pad stream needs two different nodes, got {node_a!r} twice")
    if not 1 <= lanes <= 0xFFFF or not 0 <= lane < lanes:
        raise ValueError(f"lane {lane} out of range for {lanes} lanes")
    low, high = sorted((node_a, node_b))
    personalization = (
        PROTOCOL_LABEL
        + _lp(low.encode())
        + _lp(high.encode())
        + lane.to_bytes(2, "big")
        + lanes.to_bytes(2, "big")
    )
    return bytes(secret), session.encode(), personalization


class PadStream:
    """The pad words one pair of nodes shares in one session (see the module docstring)."""

    def __init__(self, csprng: str, method: str, lanes: list[HmacDrbg | CtrDrbg], pair: tuple[str, str]) -> None:
        self.csprng = csprng
        self.method = method
        self.lanes = lanes
        self.pair = pair
        self.words_drawn = 0

    def split(self, n_words: int) -> list[tuple[int, int, int]]:
        """(lane, start, stop) runs of a request for n_words words, empty runs left out."""
        n_lanes = len(self.lanes)
        bounds = [c * n_words // n_lanes for c in range(n_lanes + 1)]
        return [(c, bounds[c], bounds[c + 1]) for c in range(n_lanes) if bounds[c + 1] > bounds[c]]

    def fill_words(self, out: np.ndarray) -> None:
        """Write the next out.size pad words into `out` (a contiguous uint64 array)."""
        if out.dtype != np.uint64 or not out.flags.c_contiguous:
            raise ValueError("pad words go into a C-contiguous uint64 array")
        flat = out.reshape(-1)
        for lane, start, stop in self.split(flat.size):
            self.lanes[lane].fill(flat[start:stop])
        self.words_drawn += flat.size


def pad_stream(
    secret: bytes,
    *,
    csprng: str = "hmac_drbg",
    method: str = "sha512",
    session: str,
    node_a: str,
    node_b: str,
    lanes: int = DEFAULT_LANES,
) -> PadStream:
    """The pad stream node_a and node_b share for `session` (same result with the ids swapped).

    csprng: "hmac_drbg" (method: sha1, sha224, sha256, sha384, sha512) or "ctr_drbg"
    (AES-256 with the derivation function; method is ignored).
    """
    name = str(csprng).lower()
    if name not in CSPRNGS:
        raise ValueError(f"unknown csprng {csprng!r}; expected one of {list(CSPRNGS)}")
    method_name = normalize_hash_name(method) if name == "hmac_drbg" else "aes256"
    if isinstance(lanes, bool) or not isinstance(lanes, int) or not 1 <= lanes <= 0xFFFF:
        raise ValueError(f"pad stream lanes must be an integer in [1, 65535], got {lanes!r}")
    drbgs: list[HmacDrbg | CtrDrbg] = []
    for lane in range(lanes):
        entropy, nonce, perso = derivation_inputs(
            secret, session=session, node_a=node_a, node_b=node_b, lane=lane, lanes=lanes
        )
        if name == "hmac_drbg":
            drbgs.append(HmacDrbg(method_name, entropy, nonce, perso))
        else:
            drbgs.append(CtrDrbg(entropy, nonce, perso, derivation_function=True))
    return PadStream(name, method_name, drbgs, tuple(sorted((node_a, node_b))))


def pad_words(stream: PadStream, n_words: int) -> np.ndarray:
    """The next n_words pad words of `stream` as a new uint64 array (advances the stream)."""
    out = np.empty(int(n_words), dtype=np.uint64)
    stream.fill_words(out)
    return out


def sign_for(self_id: str, peer_id: str) -> int:
    """+1 if self_id is the lower id of the pair (adds the pad), -1 if the higher (subtracts)."""
    if self_id == peer_id:
        raise ValueError(f"node {self_id!r} cannot share a pad with itself")
    return 1 if self_id < peer_id else -1


def _use_processes(streams: Sequence[PadStream], pad_bytes: int, workers: int | None) -> int:
    """How many worker processes to use for this round's pads (0: generate in this process)."""
    if workers is not None:
        return max(0, int(workers)) if workers != 1 else 0
    if pad_bytes < _PARALLEL_MIN_BYTES or available_cores() < 2:
        return 0
    # ctr_drbg is AES in C at GB/s: shipping the work to processes would cost more than it saves.
    if all(s.csprng == "ctr_drbg" for s in streams):
        return 0
    return available_cores()


_scratch: np.ndarray | None = None  # warm pad buffer for in-process generation, reused across rounds
_scratch_lock = threading.Lock()  # mask() may be called from several threads (parties in one process)


def _scratch_words(n_words: int) -> np.ndarray:
    global _scratch
    if _scratch is None or _scratch.size < n_words:
        _scratch = np.empty(max(n_words, 1), dtype=np.uint64)
    return _scratch[:n_words]


def mask(
    named: Mapping[str, np.ndarray],
    *,
    bits: int = 64,
    frac_bits: int | None = None,
    weight: float = 1.0,
    n_parties: int,
    self_id: str,
    peer_streams: Mapping[str, PadStream],
    workers: int | None = None,
    pad_timeout: float | None = None,
) -> dict[str, np.ndarray]:
    """Encode `named` (weighted) to fixed point and add this party's pads; returns name -> uint64 array.

    Arrays come back in `fixedpoint.encoded_shape`; tensors are processed in sorted-name order.
    `n_parties` is the number of parties whose masked dicts will be summed (overflow check).
    `workers`: None picks automatically (processes for large hmac_drbg pads on >= 2 cores),
    0 or 1 generates in this process, n >= 2 uses n worker processes.
    Errors (NaN, overflow, bad arguments) are raised before any stream advances.
    Thread-safe: concurrent calls share the warm scratch buffer / worker pool under a lock.
    """
    frac_bits = fixedpoint.check_params(bits, frac_bits)
    for peer, stream in peer_streams.items():
        sign_for(self_id, peer)
        if not isinstance(stream, PadStream) or set(stream.pair) != {self_id, peer}:
            raise ValueError(f"peer_streams[{peer!r}] is not the pad stream of the pair ({self_id!r}, {peer!r})")
    names = sorted(named)
    arrays = [np.asarray(named[k]) for k in names]
    wpe = fixedpoint.words_per_element(bits)
    offsets = [0, *itertools.accumulate(a.size * wpe for a in arrays)]
    total = int(offsets[-1])
    flat = np.empty(total, dtype=np.uint64)

    def encode_all() -> dict[str, np.ndarray]:
        views = {}
        for k, a, start, stop in zip(names, arrays, offsets[:-1], offsets[1:], strict=True):
            view = flat[start:stop].reshape(fixedpoint.encoded_shape(a.shape, bits))
            fixedpoint.encode(a, bits=bits, frac_bits=frac_bits, weight=weight, n_parties=n_parties, name=k, out=view)
            views[k] = view
        return views

    result = encode_all()
    if total == 0 or not peer_streams:
        return result
    add_pads(flat, bits=bits, self_id=self_id, peer_streams=peer_streams, workers=workers,
             pad_timeout=pad_timeout, restart=encode_all)
    return result


def add_pads(
    flat: np.ndarray,
    *,
    bits: int = 64,
    self_id: str,
    peer_streams: Mapping[str, PadStream],
    workers: int | None = None,
    pad_timeout: float | None = None,
    restart=None,
) -> None:
    """flat += sign * (the next flat.size words of every peer's stream), mod 2^bits, in place.

    `flat` is a C-contiguous uint64 word buffer (128 bits: [low, high] pairs). The sign per peer is
    `sign_for(self_id, peer)`. Worker processes as in `mask`; if they fail, `restart()` must put
    `flat` back as it was (mask re-encodes; the default zero-fills, for a pad-only buffer).
    """
    for peer, stream in peer_streams.items():
        sign_for(self_id, peer)
        if not isinstance(stream, PadStream) or set(stream.pair) != {self_id, peer}:
            raise ValueError(f"peer_streams[{peer!r}] is not the pad stream of the pair ({self_id!r}, {peer!r})")
    if flat.dtype != np.uint64 or not flat.flags.c_contiguous or flat.ndim != 1:
        raise ValueError("pads go into a flat C-contiguous uint64 array")
    total = int(flat.size)
    if total == 0 or not peer_streams:
        return
    peers = sorted(peer_streams)
    streams = [peer_streams[p] for p in peers]
    signs = [sign_for(self_id, p) for p in peers]
    acc = flat.reshape(-1, 2) if bits == 128 else flat

    def apply_row(row: int, words: np.ndarray) -> None:
        _apply(acc, words.reshape(-1, 2) if bits == 128 else words, signs[row], bits)

    n_proc = _use_processes(streams, total * 8 * len(peers), workers)
    if n_proc:
        tasks, task_row = [], []
        for row, stream in enumerate(streams):
            for lane, start, stop in stream.split(total):
                tasks.append((stream.lanes[lane], row * total + start, stop - start))
                task_row.append(row)
        lanes_left = [task_row.count(row) for row in range(len(streams))]

        def on_done(task: int, buffer: np.ndarray) -> None:
            # A peer's pad is applied as soon as all its lanes are in, while the workers go on.
            row = task_row[task]
            lanes_left[row] -= 1
            if lanes_left[row] == 0:
                apply_row(row, buffer[row * total : (row + 1) * total])

        # Timeout: far beyond a slow pure-Python DRBG (1 MB/s per task), so only a hang trips it.
        timeout = pad_timeout if pad_timeout is not None else 60.0 + total * 8 * len(peers) / 1e6
        with _scratch_lock:  # one mask at a time drives the pool and its buffer
            try:
                get_pad_workers(n_proc).fill(tasks, total * len(peers), timeout, on_done)
            except (RuntimeError, OSError) as exc:
                # No stream has advanced (states are adopted only on success): start again here.
                warnings.warn(f"pad worker processes failed ({exc}); generating pads in this process", stacklevel=3)
                if restart is None:
                    flat.fill(0)
                else:
                    restart()
            else:
                for stream in streams:
                    stream.words_drawn += total
                return
    with _scratch_lock:
        scratch = _scratch_words(total)
        for row, stream in enumerate(streams):
            stream.fill_words(scratch)
            apply_row(row, scratch)


def _apply(acc: np.ndarray, pad: np.ndarray, sign: int, bits: int) -> None:
    """acc += sign * pad mod 2^bits (128 bits: block by block, carries in a small warm buffer)."""
    if bits == 64:
        (np.add if sign > 0 else np.subtract)(acc, pad, out=acc)
        return
    op = fixedpoint.add_limbs if sign > 0 else fixedpoint.sub_limbs
    n = acc.shape[0]
    carry = np.empty(min(n, _SUM_BLOCK), dtype=np.bool_)
    for s in range(0, n, _SUM_BLOCK):
        e = min(n, s + _SUM_BLOCK)
        op(acc[s:e, 0], acc[s:e, 1], pad[s:e, 0], pad[s:e, 1], carry[: e - s])


# Elements per block when summing: the block's accumulators stay in cache across all parties,
# so memory traffic is one read of every input and one write of the result.
_SUM_BLOCK = 32768


def _sum_decode(parts: list[np.ndarray], target: np.ndarray, *, bits: int, frac_bits: int, divide_by: float) -> None:
    """target = decode(sum of parts mod 2^bits) / divide_by, block by block."""
    n = target.size
    out = target.reshape(-1)
    if bits == 64:
        flat = [p.reshape(-1) for p in parts]
        acc_all = out.view(np.uint64)  # sum in the output's own memory, then convert in place
        for s in range(0, n, _SUM_BLOCK):
            e = min(n, s + _SUM_BLOCK)
            acc = acc_all[s:e]
            if len(flat) == 1:
                np.copyto(acc, flat[0][s:e])
            else:
                np.add(flat[0][s:e], flat[1][s:e], out=acc)
            for p in flat[2:]:
                np.add(acc, p[s:e], out=acc)
            fixedpoint.decode(acc, bits=64, frac_bits=frac_bits, divide_by=divide_by, out=out[s:e])
        return
    flat = [p.reshape(-1, 2) for p in parts]
    block = min(n, _SUM_BLOCK)
    lo_buf = np.empty(block, dtype=np.uint64)
    hi_buf = np.empty(block, dtype=np.uint64)
    carry_buf = np.empty(block, dtype=np.bool_)
    for s in range(0, n, _SUM_BLOCK):
        e = min(n, s + _SUM_BLOCK)
        lo, hi, carry = lo_buf[: e - s], hi_buf[: e - s], carry_buf[: e - s]
        np.copyto(lo, flat[0][s:e, 0])
        np.copyto(hi, flat[0][s:e, 1])
        for p in flat[1:]:
            fixedpoint.add_limbs(lo, hi, p[s:e, 0], p[s:e, 1], carry)
        fixedpoint.decode_limbs(lo, hi, frac_bits=frac_bits, divide_by=divide_by, out=out[s:e])


def unmask_sum(
    masked_dicts: Sequence[Mapping[str, np.ndarray]],
    *,
    bits: int = 64,
    frac_bits: int | None = None,
    divide_by: float = 1.0,
    out: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Sum the parties' masked dicts modulo 2^bits and decode: name -> float64 (sum / divide_by).

    The pads cancel only when every masked party's dict is included. Every dict must have the
    same names, dtype uint64 and shapes (ValueError naming the tensor and party otherwise).
    `out` may supply float64 arrays (warm buffers reused across rounds) to decode into.
    """
    frac_bits = fixedpoint.check_params(bits, frac_bits)
    if not math.isfinite(float(divide_by)) or float(divide_by) == 0:
        raise ValueError(f"divide_by must be a finite non-zero number, got {divide_by!r}")
    dicts = list(masked_dicts)
    if not dicts:
        raise ValueError("unmask_sum needs at least one masked dict")
    names = sorted(dicts[0])
    for i, d in enumerate(dicts):
        if sorted(d) != names:
            missing = sorted(set(names) - set(d))
            extra = sorted(set(d) - set(names))
            raise ValueError(f"masked dict #{i} has different tensors (missing {missing}, extra {extra})")
    result: dict[str, np.ndarray] = {}
    for name in names:
        parts = [np.asarray(d[name]) for d in dicts]
        shape = parts[0].shape
        for i, part in enumerate(parts):
            if part.dtype != np.uint64 or part.shape != shape:
                raise ValueError(
                    f"tensor {name!r} of masked dict #{i}: expected uint64 {shape}, got {part.dtype} {part.shape}"
                )
        if bits == 128 and shape[-1:] != (2,):
            raise ValueError(f"tensor {name!r}: 128-bit values need a last axis of 2 limbs, got {shape}")
        dec_shape = shape if bits == 64 else shape[:-1]
        target = None if out is None else out.get(name)
        if target is None:
            target = np.empty(dec_shape, dtype=np.float64)
        elif target.shape != dec_shape or target.dtype != np.float64 or not target.flags.c_contiguous:
            raise ValueError(f"out[{name!r}] must be float64 of shape {dec_shape}")
        _sum_decode(parts, target, bits=bits, frac_bits=frac_bits, divide_by=divide_by)
        result[name] = target
    return result
