"""Pad streams: the one-time-pad words a pair of nodes shares in one session.

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
"""

from __future__ import annotations

import numpy as np

from xfed.crypto.drbg import CtrDrbg, HmacDrbg, normalize_hash_name

__all__ = ["PROTOCOL_LABEL", "DEFAULT_LANES", "CSPRNGS", "PadStream", "pad_stream", "pad_words", "derivation_inputs",
           "sign_for"]

PROTOCOL_LABEL = b"xfed/otp-pad/v1"
DEFAULT_LANES = 4  # sub-streams per pair: enough to balance 2-8 cores for any number of peers
CSPRNGS = ("hmac_drbg", "ctr_drbg")


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
