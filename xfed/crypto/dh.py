"""Finite-field Diffie-Hellman on the RFC 7919 groups (ffdhe2048 ... ffdhe8192), with gmpy2.

Every RFC 7919 prime p is a safe prime (q = (p-1)/2 prime) and g = 2 generates the subgroup of
order q, so a valid public value y satisfies 2 <= y <= p-2 and y^q = 1 (mod p): this rules out
the small-subgroup values 0, 1 and p-1 (which make the shared secret public) and every quadratic
non-residue. Private keys are RFC 7919 §5.2 short exponents when `optimized` (at least twice the
group's security strength in bits), otherwise uniform in [2, q-1].
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import gmpy2

__all__ = ["DhGroup", "named_group", "generate_keypair", "validate_public", "shared_secret", "GROUP_BITS"]

# RFC 7919 Appendix A: p = 2^b - 2^(b-64) + (floor(2^(b-130) * e) + X) * 2^64 - 1, g = 2. Per size b:
# X (the offset that makes p a safe prime) and the shortest recommended private exponent in bits.
_FFDHE = {2048: (560316, 225), 3072: (2625351, 275), 4096: (5736041, 325),
          6144: (15705020, 375), 8192: (10965728, 400)}
GROUP_BITS = tuple(sorted(_FFDHE))


@dataclass(frozen=True)
class DhGroup:
    """A safe-prime group: p prime, q = (p-1)/2 prime, g of order q. `short_exponent_bits` = 0: full range."""

    p: int
    g: int = 2
    name: str = ""
    short_exponent_bits: int = 0
    q: int = field(init=False)

    def __post_init__(self) -> None:
        p, g = int(self.p), int(self.g)
        if p < 5 or p % 2 == 0:
            raise ValueError("DH modulus p must be an odd prime > 3")
        if not 2 <= g <= p - 2:
            raise ValueError("DH generator g must satisfy 2 <= g <= p-2")
        object.__setattr__(self, "p", p)
        object.__setattr__(self, "g", g)
        object.__setattr__(self, "q", (p - 1) // 2)

    @property
    def bits(self) -> int:
        return self.p.bit_length()

    @property
    def byte_length(self) -> int:
        """Length of p in bytes: public values and shared secrets travel as exactly this many bytes."""
        return (self.p.bit_length() + 7) // 8

    def encode_public(self, y: int) -> bytes:
        """Public value as big-endian bytes of byte_length (validated first)."""
        validate_public(self, y)
        return int(y).to_bytes(self.byte_length, "big")

    def decode_public(self, data: bytes) -> int:
        """Inverse of encode_public; ValueError on a wrong length or an invalid value."""
        if not isinstance(data, (bytes, bytearray)) or len(data) != self.byte_length:
            raise ValueError(f"DH public value must be {self.byte_length} bytes for {self.name or self.bits}")
        y = int.from_bytes(data, "big")
        validate_public(self, y)
        return y


_GROUPS: dict[int, DhGroup] = {}


def _floor_e_times_2_to(n: int) -> int:
    """floor(2^n * e) as the series sum 2^n/k!, with 64 guard bits against the per-term rounding."""
    term, total, k = 1 << (n + 64), 0, 0
    while term:
        total += term
        k += 1
        term //= k
    return total >> 64


def _ffdhe_prime(b: int) -> int:
    return (1 << b) - (1 << (b - 64)) + ((_floor_e_times_2_to(b - 130) + _FFDHE[b][0]) << 64) - 1


def named_group(bits: int | str) -> DhGroup:
    """RFC 7919 group by size (2048, 3072, 4096, 6144, 8192) or name ('ffdhe3072')."""
    key = bits
    if isinstance(key, str):
        text = key.strip().lower()
        text = text[len("ffdhe"):] if text.startswith("ffdhe") else text
        if not text.isdigit():
            raise ValueError(f"unknown DH group {bits!r}; expected one of {[f'ffdhe{b}' for b in GROUP_BITS]}")
        key = int(text)
    if isinstance(key, bool) or not isinstance(key, int) or key not in _FFDHE:
        raise ValueError(f"unknown DH group {bits!r}; key_bitlength must be one of {list(GROUP_BITS)}")
    if key not in _GROUPS:
        _GROUPS[key] = DhGroup(_ffdhe_prime(key), 2, f"ffdhe{key}", _FFDHE[key][1])
    return _GROUPS[key]


def generate_keypair(group: DhGroup, optimized: bool = True) -> tuple[int, int]:
    """(private, public): a fresh private exponent from `secrets` and y = g^x mod p."""
    if optimized and group.short_exponent_bits:
        # Uniform in [2, 2^L): RFC 7919 §5.2 short exponent of L bits.
        private = secrets.randbelow((1 << group.short_exponent_bits) - 2) + 2
    else:
        private = secrets.randbelow(group.q - 2) + 2  # [2, q-1]
    public = int(gmpy2.powmod(group.g, private, group.p))
    return private, public


def validate_public(group: DhGroup, y: int) -> None:
    """Raise ValueError unless 2 <= y <= p-2 and y^q = 1 (mod p) (y in the prime-order subgroup)."""
    if isinstance(y, bool) or not isinstance(y, (int, type(gmpy2.mpz(0)))):
        raise ValueError(f"DH public value must be an integer, not {type(y).__name__}")
    y = int(y)
    if not 2 <= y <= group.p - 2:
        raise ValueError(f"DH public value out of range [2, p-2] for {group.name or group.bits}")
    if gmpy2.powmod(y, group.q, group.p) != 1:
        raise ValueError(f"DH public value is not in the prime-order subgroup of {group.name or group.bits}")


def shared_secret(group: DhGroup, private: int, peer_public: int) -> bytes:
    """Z = peer_public^private mod p as big-endian bytes of exactly group.byte_length (leading zeros kept)."""
    validate_public(group, peer_public)
    if isinstance(private, bool) or not isinstance(private, int) or not 2 <= private < group.q:
        raise ValueError("DH private exponent must be an integer in [2, q-1]")
    z = int(gmpy2.powmod(int(peer_public), private, group.p))
    if z in (0, 1, group.p - 1):  # impossible for a validated peer value; kept as a last guard
        raise ValueError("DH shared secret is degenerate")
    return z.to_bytes(group.byte_length, "big")
