"""Shamir t-of-n secret sharing over GF(P), P = 2^521 - 1 (a Mersenne prime), and sealed shares.

A secret is an integer 0 <= s < P (a DH private exponent of <= 520 bits, or a 32-byte seed read
big-endian). `split(s, t, xs)` draws a uniform polynomial f of degree t-1 with f(0) = s (the t-1
other coefficients from `secrets`) and returns f(x) for every x in `xs` (the parties' indices,
1..n: x = 0 would hand out the secret itself). Any t shares give s by Lagrange interpolation at 0;
t-1 shares are uniformly distributed whatever s is, so they say nothing about it.

`combine(shares, t)` needs >= t shares with distinct x. When it has more than t it checks that
every extra share lies on the polynomial through the first t: a wrong or forged share is then
detected (ShareError), never silently turned into a wrong secret. With exactly t shares a wrong
one cannot be noticed here; the caller checks the result against a commitment (a DH private key
against its public value, a seed against its hash).

Sealing (`seal_share` / `open_share`): AES-256-GCM under a key drawn from HMAC_DRBG(sha512) with
the pair's channel DH secret as entropy, the session as nonce and the personalization
b"xfed/secagg-share-key/v1" || lp(lower id) || lp(higher id) (the pads' layout, another label),
a random 96-bit nonce per message, and the associated data binding label, session, epoch, round,
sender, receiver and what travels beside the seal (the round's public value and seed commitment):
a share sealed for one round, pair or direction, or next to another public value, does not open.
Python ints on a handful of values: no tensors here, so nothing to vectorise.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xfed.crypto.drbg import HmacDrbg

__all__ = ["PRIME", "SHARE_BYTES", "Share", "ShareError", "split", "combine", "share_key", "seal_share",
           "open_share", "encode_share", "decode_share"]

PRIME = (1 << 521) - 1
SHARE_BYTES = 66                       # ceil(521 / 8): one field element, big-endian
_KEY_LABEL = b"xfed/secagg-share-key/v1"
_AAD_LABEL = b"xfed/secagg-share/v1"
_NONCE_BYTES = 12


class ShareError(ValueError):
    """Shares that cannot give the secret: too few, duplicate x, out of range, or inconsistent."""


@dataclass(frozen=True)
class Share:
    x: int   # the holder's index, 1..n
    y: int   # f(x) mod PRIME


def _poly_eval(coeffs: list[int], x: int) -> int:
    acc = 0
    for c in reversed(coeffs):  # Horner
        acc = (acc * x + c) % PRIME
    return acc


def split(secret: int, t: int, xs: list[int]) -> dict[int, Share]:
    """x -> share of `secret` for each x in xs; any t of them reconstruct it."""
    if isinstance(secret, bool) or not isinstance(secret, int) or not 0 <= secret < PRIME:
        raise ValueError("Shamir secret must be an integer in [0, 2^521 - 1)")
    xs = [int(x) for x in xs]
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError(f"share indices must be distinct and non-zero, got {xs}")
    if not 1 <= t <= len(xs):
        raise ValueError(f"threshold {t} out of range for {len(xs)} shares")
    coeffs = [secret] + [secrets.randbelow(PRIME) for _ in range(t - 1)]
    return {x: Share(x, _poly_eval(coeffs, x)) for x in xs}


def _lagrange_at(shares: list[Share], at: int) -> int:
    """f(at) for the polynomial of degree len(shares)-1 through `shares`."""
    total = 0
    for i, si in enumerate(shares):
        num, den = 1, 1
        for j, sj in enumerate(shares):
            if i != j:
                num = num * (at - sj.x) % PRIME
                den = den * (si.x - sj.x) % PRIME
        total = (total + si.y * num * pow(den, -1, PRIME)) % PRIME
    return total


def combine(shares: list[Share], t: int) -> int:
    """The secret from >= t shares; ShareError if too few, duplicated, out of range or inconsistent."""
    shares = list(shares)
    xs = [s.x for s in shares]
    if len(set(xs)) != len(xs):
        raise ShareError(f"duplicate share indices {sorted(xs)}")
    if any(not (0 < s.x < PRIME and 0 <= s.y < PRIME) for s in shares):
        raise ShareError("share out of range for GF(2^521 - 1)")
    if len(shares) < t:
        raise ShareError(f"{len(shares)} share(s), threshold {t}")
    base = shares[:t]
    for extra in shares[t:]:
        if _lagrange_at(base, extra.x) != extra.y:
            raise ShareError(f"shares disagree (share {extra.x} is not on the polynomial of shares "
                             f"{[s.x for s in base]}): a wrong or forged share")
    return _lagrange_at(base, 0)


def encode_share(share: Share) -> bytes:
    return share.y.to_bytes(SHARE_BYTES, "big")


def decode_share(x: int, data: bytes) -> Share:
    if len(data) != SHARE_BYTES:
        raise ShareError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
    y = int.from_bytes(data, "big")
    if y >= PRIME:
        raise ShareError("share out of range for GF(2^521 - 1)")
    return Share(int(x), y)


def _lp(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def share_key(secret: bytes, *, session: str, node_a: str, node_b: str) -> bytes:
    """The 32-byte AES key node_a and node_b seal shares with (same whichever end derives it)."""
    if node_a == node_b:
        raise ValueError("a share key needs two different nodes")
    low, high = sorted((node_a, node_b))
    drbg = HmacDrbg("sha512", bytes(secret), session.encode(), _KEY_LABEL + _lp(low) + _lp(high))
    return drbg.generate(32)


def _aad(session: str, epoch: int, round_idx: int, sender: str, receiver: str, bound: bytes) -> bytes:
    fields = [session.encode(), str(int(epoch)).encode(), str(int(round_idx)).encode(), sender.encode(),
              receiver.encode(), bytes(bound)]
    return _AAD_LABEL + b"".join(len(f).to_bytes(4, "big") + f for f in fields)


def seal_share(key: bytes, plaintext: bytes, *, session: str, epoch: int, round_idx: int, sender: str,
               receiver: str, bound: bytes = b"") -> bytes:
    """nonce || AES-256-GCM(plaintext) bound to (session, epoch, round, sender -> receiver, `bound`):
    `bound` is what travels beside the seal in clear and must not be swapped (public value, commitment)."""
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, _aad(session, epoch, round_idx, sender, receiver, bound))


def open_share(key: bytes, sealed: bytes, *, session: str, epoch: int, round_idx: int, sender: str,
               receiver: str, bound: bytes = b"") -> bytes:
    """The plaintext, or ShareError when the ciphertext was changed or sealed for another context."""
    if len(sealed) < _NONCE_BYTES + 16:
        raise ShareError(f"sealed share {sender} -> {receiver} is too short")
    try:
        return AESGCM(key).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:],
                                   _aad(session, epoch, round_idx, sender, receiver, bound))
    except InvalidTag:
        raise ShareError(f"sealed share {sender} -> {receiver} (epoch {epoch}, round {round_idx}) does not "
                         "open: changed, replayed from another round or pair, or sealed under another key") from None
