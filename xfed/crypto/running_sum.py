"""A running sum of masked (or plain fixed-point) dicts modulo 2^bits, added one dict at a time.

Streaming aggregation: the root adds each upload as it arrives and drops it, so its memory is the
sum plus the one upload in hand, whatever the number of parties (`unmask_sum` needs every dict at
once). Addition modulo 2^bits is associative and commutative, so the result is bit for bit the
`unmask_sum` of the same dicts in any arrival order, and the pads still cancel only in the full sum.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from xfed.crypto import fixedpoint
from xfed.crypto.otp import unmask_sum


class RunningSum:
    """sum of the added dicts mod 2^bits; `decode` returns name -> float64 (sum / divide_by)."""

    def __init__(self, *, bits: int = 64, frac_bits: int | None = None) -> None:
        self.frac_bits = fixedpoint.check_params(bits, frac_bits)
        self.bits = bits
        self.count = 0
        self._acc: dict[str, np.ndarray] = {}
        self._carry: dict[str, np.ndarray] = {}

    def check(self, masked: Mapping[str, np.ndarray]) -> None:
        """ValueError naming the tensor unless `masked` fits the dicts added so far (names, uint64, shapes)."""
        if not self.count:
            for name, arr in masked.items():
                arr = np.asarray(arr)
                if arr.dtype != np.uint64:
                    raise ValueError(f"tensor {name!r}: expected uint64, got {arr.dtype}")
                if self.bits == 128 and arr.shape[-1:] != (2,):
                    raise ValueError(f"tensor {name!r}: 128-bit values need a last axis of 2 limbs, got {arr.shape}")
            return
        if set(masked) != set(self._acc):
            missing, extra = sorted(set(self._acc) - set(masked)), sorted(set(masked) - set(self._acc))
            raise ValueError(f"different tensors (missing {missing[:5]}, extra {extra[:5]})")
        for name, acc in self._acc.items():
            arr = np.asarray(masked[name])
            if arr.dtype != np.uint64 or arr.shape != acc.shape:
                raise ValueError(f"tensor {name!r}: expected uint64 {acc.shape}, got {arr.dtype} {arr.shape}")

    def add(self, masked: Mapping[str, np.ndarray], *, adopt: bool = False) -> None:
        """acc += masked (mod 2^bits), checked first (nothing is added when the check fails).

        With `adopt` the first dict's arrays become the sum when they are writable and contiguous
        (a received upload the caller drops: no copy); otherwise they are copied. Later dicts are only read."""
        self.check(masked)
        if not self.count:
            for name, arr in masked.items():
                arr = np.asarray(arr)
                owned = adopt and arr.flags.writeable and arr.flags.c_contiguous and arr.flags.aligned
                self._acc[name] = arr if owned else np.array(arr, dtype=np.uint64, order="C")
        else:
            for name, acc in self._acc.items():
                fixedpoint.add_into(acc, np.asarray(masked[name]), self.bits, self._carry_of(name, acc))
        self.count += 1

    def subtract(self, masked: Mapping[str, np.ndarray]) -> None:
        """acc -= masked (mod 2^bits): takes back a dict added before, leaving bit for bit the sum
        without it (a SecAgg root that leaves out an upload it already summed). Checked first."""
        if not self.count:
            raise ValueError("a running sum of no dicts has nothing to subtract from")
        self.check(masked)
        for name, acc in self._acc.items():
            fixedpoint.sub_into(acc, np.asarray(masked[name]), self.bits, self._carry_of(name, acc))
        self.count -= 1

    def _carry_of(self, name: str, acc: np.ndarray) -> np.ndarray | None:
        """The reusable carry buffer of one 128-bit accumulator (None at 64 bits: no carry between limbs)."""
        if self.bits != 128:
            return None
        carry = self._carry.get(name)
        if carry is None:
            carry = self._carry[name] = np.empty(acc.shape[:-1], dtype=np.bool_)
        return carry

    def decode(self, *, divide_by: float = 1.0) -> dict[str, np.ndarray]:
        """The decoded sum (name -> float64); ValueError when nothing was added."""
        if not self.count:
            raise ValueError("a running sum of no dicts has nothing to decode")
        return unmask_sum([self._acc], bits=self.bits, frac_bits=self.frac_bits, divide_by=divide_by)

    def raw(self) -> dict[str, np.ndarray]:
        """The undecoded sum (the running sum's own arrays: read only)."""
        return self._acc
