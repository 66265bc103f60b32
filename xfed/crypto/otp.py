"""One-time-pad masking of named tensors for secure aggregation, and the aggregator's unmasked sum.

Pad streams (key derivation, lanes) are in `pads.py`.

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
from xfed.crypto.pad_workers import available_cores, get_pad_workers
from xfed.crypto.pads import PadStream, sign_for

__all__ = ["mask", "unmask_sum", "add_pads"]

# Below this many pad bytes per round, process start/hand-over costs more than it saves.
_PARALLEL_MIN_BYTES = 4 << 20


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
