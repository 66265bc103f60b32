"""The self-mask of dropout-tolerant secure aggregation: a pad stream keyed by one party's fresh seed.

    entropy          = the 32-byte seed b (fresh from `secrets` for every round)
    nonce            = the round's session, e.g. "job/stage/attempt/e0/r3", as UTF-8
    personalization  = b"xfed/secagg-self/v1" || lp(owner id) || u16(lane) || u16(lanes)

The label differs from the pairwise pads' (`xfed/otp-pad/v1`), so a self-mask stream never equals
a pairwise one even on equal inputs; the nonce carries epoch and round. The stream is a PadStream
whose "pair" is (owner, SELF_PEER): `add_pads` with self_id=owner adds it (owner < SELF_PEER in
string order, as "~" sorts after every character a node id may hold) and with self_id=SELF_PEER
subtracts it, which is how the aggregator removes it once the seed is reconstructed.
"""

from __future__ import annotations

import hashlib

from xfed.crypto.drbg import CtrDrbg, HmacDrbg, normalize_hash_name
from xfed.crypto.pads import CSPRNGS, DEFAULT_LANES, PadStream

__all__ = ["SELF_PEER", "SEED_BYTES", "self_mask_stream", "seed_commitment"]

SELF_PEER = "~self-mask"   # never a node id (ids are [A-Za-z0-9_.-]); sorts after all of them
SEED_BYTES = 32
_LABEL = b"xfed/secagg-self/v1"
_COMMIT_LABEL = b"xfed/secagg-seed-commit/v1"


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def self_mask_stream(seed: bytes, *, csprng: str = "hmac_drbg", method: str = "sha512", session: str,
                     owner: str, lanes: int = DEFAULT_LANES) -> PadStream:
    """The self-mask stream of `owner` for one round (`session` names job/stage/attempt/epoch/round)."""
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
        raise ValueError(f"self-mask seed must be {SEED_BYTES} bytes")
    if not session or not owner or owner >= SELF_PEER:
        raise ValueError(f"self-mask stream needs a session and a node id, got {session!r}, {owner!r}")
    name = str(csprng).lower()
    if name not in CSPRNGS:
        raise ValueError(f"unknown csprng {csprng!r}; expected one of {list(CSPRNGS)}")
    method_name = normalize_hash_name(method) if name == "hmac_drbg" else "aes256"
    drbgs: list[HmacDrbg | CtrDrbg] = []
    for lane in range(lanes):
        perso = _LABEL + _lp(owner.encode()) + lane.to_bytes(2, "big") + lanes.to_bytes(2, "big")
        if name == "hmac_drbg":
            drbgs.append(HmacDrbg(method_name, bytes(seed), session.encode(), perso))
        else:
            drbgs.append(CtrDrbg(bytes(seed), session.encode(), perso, derivation_function=True))
    return PadStream(name, method_name, drbgs, (owner, SELF_PEER))


def seed_commitment(seed: bytes, *, session: str, owner: str) -> str:
    """SHA-256 commitment (hex) to a round's seed: lets the aggregator check the seed it reconstructed.

    The seed has 256 bits of entropy, so its hash reveals nothing usable about it."""
    return hashlib.sha256(_COMMIT_LABEL + _lp(session.encode()) + _lp(owner.encode()) + bytes(seed)).hexdigest()
