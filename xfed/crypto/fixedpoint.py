"""Fixed-point encoding of float arrays into the rings Z/2^64 and Z/2^128, vectorised with numpy.

A value v is stored as the two's-complement integer round(w * v * 2^frac_bits) modulo 2^bits.
Layouts (what `mask` sends and `unmask_sum` reads):
- 64 bits: a uint64 array of the tensor's shape.
- 128 bits: a uint64 array of shape (*shape, 2) holding [low, high] limbs, i.e. each element is a
  little-endian 128-bit integer in memory, so 16 DRBG bytes read as "<u8" pairs are one pad element.

Sums of encoded values are correct as long as the true sum fits the signed range; `encode`
refuses (OverflowError naming the tensor) any input for which n_parties such values could
leave it, instead of wrapping silently. NaN and infinity are refused (ValueError) the same way.
No Python loop over elements: every step is a numpy pass.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "SUPPORTED_BITS",
    "default_frac_bits",
    "check_params",
    "encode",
    "decode",
    "add_into",
    "sub_into",
    "add_limbs",
    "sub_limbs",
    "decode_limbs",
    "encoded_shape",
    "words_per_element",
]

SUPPORTED_BITS = (64, 128)
_DEFAULT_FRAC = {64: 32, 128: 64}  # XFL's scale for 64-bit; 2^64 for 128-bit
_TWO64 = float(2**64)


def default_frac_bits(bits: int) -> int:
    """32 for the 64-bit ring (XFL's 2^32 scale), 64 for the 128-bit ring."""
    check_params(bits, None)
    return _DEFAULT_FRAC[bits]


def check_params(bits: int, frac_bits: int | None) -> int:
    """Validate (bits, frac_bits); returns frac_bits with the default filled in."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"fixed-point ring must be 64 or 128 bits, got {bits!r}")
    if frac_bits is None:
        return _DEFAULT_FRAC[bits]
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, (int, np.integer)) or not 0 <= frac_bits <= bits - 2:
        raise ValueError(f"frac_bits must be an integer in [0, {bits - 2}] for {bits}-bit fixed point, got {frac_bits!r}")
    return int(frac_bits)


def words_per_element(bits: int) -> int:
    """uint64 words per encoded element: 1 or 2."""
    return bits // 64


def encoded_shape(shape: tuple[int, ...], bits: int) -> tuple[int, ...]:
    """Shape of the uint64 array that encodes a tensor of `shape`."""
    return tuple(shape) if bits == 64 else (*shape, 2)


# Elements per block: a block's float64 temporaries stay in cache, and no tensor-sized
# temporary is allocated (fresh pages cost far more than the arithmetic on them).
_BLOCK = 32768


def _check_range(arr: np.ndarray, *, scale: float, bits: int, n_parties: int, name: str, frac_bits: int) -> float:
    """max|arr * scale|; NaN/inf -> ValueError; n_parties * (that + 1/2) beyond the signed range -> OverflowError."""
    if arr.size == 0:
        return 0.0
    top, bottom = float(arr.max()), float(arr.min())
    if math.isnan(top) or math.isnan(bottom):
        raise ValueError(f"tensor {name!r} contains NaN; refusing to encode it")
    if math.isinf(top) or math.isinf(bottom):
        raise ValueError(f"tensor {name!r} contains infinity; refusing to encode it")
    m = max(abs(top), abs(bottom)) * scale  # scaling by a positive constant keeps the order
    # Rounding adds at most 1/2 per party; the factor keeps float64's own error on the safe side.
    if n_parties * (m + 0.5) >= 2.0 ** (bits - 1) * (1.0 - 2.0**-40):
        raise OverflowError(
            f"tensor {name!r}: |weight * value| up to {m / 2.0**frac_bits:.6g} times {n_parties} parties "
            f"does not fit {bits}-bit fixed point with {frac_bits} fractional bits; "
            f"use 128 bits or fewer frac_bits"
        )
    return m


def encode(
    x: np.ndarray,
    *,
    bits: int = 64,
    frac_bits: int | None = None,
    weight: float = 1.0,
    n_parties: int = 1,
    name: str = "tensor",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """round(weight * x * 2^frac_bits) mod 2^bits as uint64 (see module docstring for the layout).

    `n_parties` is how many such values will be summed: the overflow check is for the sum.
    `out` (uint64, encoded_shape) receives the result when given. All checks run before
    anything is written.
    """
    frac_bits = check_params(bits, frac_bits)
    weight = float(weight)
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"tensor {name!r}: weight must be a finite number >= 0, got {weight!r}")
    if isinstance(n_parties, bool) or not isinstance(n_parties, (int, np.integer)) or n_parties < 1:
        raise ValueError(f"n_parties must be a positive integer, got {n_parties!r}")
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"tensor {name!r}: cannot encode dtype {arr.dtype}")
    scale = weight * 2.0**frac_bits
    largest = _check_range(arr, scale=scale, bits=bits, n_parties=int(n_parties), name=name, frac_bits=frac_bits)
    shape = encoded_shape(arr.shape, bits)
    if out is None:
        out = np.empty(shape, dtype=np.uint64)
    elif out.shape != shape or out.dtype != np.uint64 or not out.flags.c_contiguous:
        raise ValueError(f"tensor {name!r}: out must be C-contiguous uint64 of shape {shape}")
    flat_x = arr.reshape(-1)
    flat_out = out.reshape(-1) if bits == 64 else out.reshape(-1, 2)
    n = flat_x.size
    y_buf = np.empty(min(n, _BLOCK), dtype=np.float64)
    for s in range(0, n, _BLOCK):
        e = min(n, s + _BLOCK)
        y = y_buf[: e - s]
        np.multiply(flat_x[s:e], scale, out=y)
        np.rint(y, out=y)  # round half to even: nearest, without a bias toward +inf
        if bits == 64:
            np.copyto(flat_out[s:e].view(np.int64), y, casting="unsafe")
        else:
            _encode_block_128(y, flat_out[s:e, 0], flat_out[s:e, 1], small=largest < 2.0**63)
    return out


def _encode_block_128(y: np.ndarray, lo: np.ndarray, hi: np.ndarray, *, small: bool) -> None:
    """Integer-valued float64 y (|y| < 2^127) into exact low/high limbs; y is destroyed."""
    if small:
        # Fits int64: the low limb is the int64 itself, the high limb its sign extension.
        np.copyto(lo.view(np.int64), y, casting="unsafe")
        np.right_shift(lo.view(np.int64), 63, out=hi.view(np.int64))
        return
    # value = H * 2^64 + L with H = rint(y / 2^64) and L = y - H * 2^64 in [-2^63, 2^63]: both
    # are exact in float64 (if |y| >= 2^62, L is a multiple of y's ulp and needs <= 53 bits;
    # below, H = 0 and L = y). Then lo = L mod 2^64 and hi = H - 1 where L < 0 (its borrow).
    h = y * (1.0 / _TWO64)
    np.rint(h, out=h)
    y -= h * _TWO64
    edge = y >= 2.0**63  # L = +2^63 (a tie rounded to even): write it as -2^63 + one more 2^64
    if edge.any():
        y[edge] -= _TWO64
        h[edge] += 1.0
    lo_i, hi_i = lo.view(np.int64), hi.view(np.int64)
    np.copyto(lo_i, y, casting="unsafe")
    np.copyto(hi_i, h, casting="unsafe")
    hi_i += lo_i >> 63


def decode(
    v: np.ndarray,
    *,
    bits: int = 64,
    frac_bits: int | None = None,
    divide_by: float = 1.0,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Signed fixed-point back to float64, divided by `divide_by` (folded into one multiply)."""
    frac_bits = check_params(bits, frac_bits)
    divide_by = float(divide_by)
    if not math.isfinite(divide_by) or divide_by == 0:
        raise ValueError(f"divide_by must be a finite non-zero number, got {divide_by!r}")
    v = np.asarray(v)
    if v.dtype != np.uint64:
        raise ValueError(f"fixed-point values must be uint64, got {v.dtype}")
    scale = 2.0**-frac_bits / divide_by
    if out is None:
        out = np.empty(v.shape if bits == 64 else v.shape[:-1], dtype=np.float64)
    if bits == 64:
        return np.multiply(v.view(np.int64), scale, out=out)
    if v.shape[-1:] != (2,):
        raise ValueError(f"128-bit fixed-point values need a last axis of 2 limbs, got shape {v.shape}")
    return decode_limbs(v[..., 0].copy(), v[..., 1].copy(), frac_bits=frac_bits, divide_by=divide_by, out=out)


def decode_limbs(
    lo: np.ndarray, hi: np.ndarray, *, frac_bits: int, divide_by: float = 1.0, out: np.ndarray | None = None
) -> np.ndarray:
    """Decode 128-bit values given as contiguous low/high limb arrays; lo and hi are destroyed.

    value = hi * 2^64 + lo = (hi + lo_top) * 2^64 + signed(lo), where lo_top is lo's top bit:
    with the low limb signed, the two float64 terms never cancel catastrophically (a small
    negative value is 0 * 2^64 + signed(lo)), so the result is within an ulp or two of exact.
    """
    if out is None:
        out = np.empty(lo.shape, dtype=np.float64)
    top = out.view(np.uint64)  # out's memory is free until the end: use it for lo's top bit
    np.right_shift(lo, np.uint64(63), out=top)
    np.add(hi, top, out=hi)
    lo_f = lo.view(np.float64)
    np.multiply(lo.view(np.int64), 2.0**-frac_bits / divide_by, out=lo_f)  # same-size in-place convert
    np.multiply(hi.view(np.int64), 2.0 ** (64 - frac_bits) / divide_by, out=out)
    np.add(out, lo_f, out=out)
    return out


def add_into(acc: np.ndarray, other: np.ndarray, bits: int, carry: np.ndarray | None = None) -> np.ndarray:
    """acc += other (mod 2^bits), in place, with the 128-bit carry vectorised.

    `carry`: optional bool scratch of shape acc.shape[:-1] (128 bits), to avoid a temporary.
    """
    if bits == 64:
        return np.add(acc, other, out=acc)
    add_limbs(acc[..., 0], acc[..., 1], other[..., 0], other[..., 1], carry)
    return acc


def sub_into(acc: np.ndarray, other: np.ndarray, bits: int, carry: np.ndarray | None = None) -> np.ndarray:
    """acc -= other (mod 2^bits), in place, with the 128-bit borrow vectorised."""
    if bits == 64:
        return np.subtract(acc, other, out=acc)
    sub_limbs(acc[..., 0], acc[..., 1], other[..., 0], other[..., 1], carry)
    return acc


def add_limbs(lo: np.ndarray, hi: np.ndarray, olo: np.ndarray, ohi: np.ndarray, carry: np.ndarray | None = None) -> None:
    """(hi, lo) += (ohi, olo) mod 2^128, in place, on limb arrays (views may be strided)."""
    np.add(lo, olo, out=lo)
    carry = np.less(lo, olo, out=carry)  # wrapped iff the sum came out below an addend
    np.add(hi, ohi, out=hi)
    np.add(hi, carry.view(np.uint8), out=hi, casting="unsafe")


def sub_limbs(lo: np.ndarray, hi: np.ndarray, olo: np.ndarray, ohi: np.ndarray, carry: np.ndarray | None = None) -> None:
    """(hi, lo) -= (ohi, olo) mod 2^128, in place, on limb arrays."""
    borrow = np.less(lo, olo, out=carry)
    np.subtract(lo, olo, out=lo)
    np.subtract(hi, ohi, out=hi)
    np.subtract(hi, borrow.view(np.uint8), out=hi, casting="unsafe")
