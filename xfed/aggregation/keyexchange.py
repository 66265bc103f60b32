"""Pairwise Diffie-Hellman between the masked parties over the Comm, and the pad streams it seeds.

Every label trainer sends one public value (RFC 7919 group) to every other label trainer and
receives theirs; the exchange goes through `exchange_publics` alone, so identity signatures
(fed_conf `identities`: Ed25519 keys pinned per node) are applied and checked in one place. When
identities are configured each public value is signed over (session, sender, receiver, group,
value) and verified against the sender's pinned key before use; without them the exchange is
unauthenticated (a broker in the middle could substitute values; see docs). The stage's Comm
signs every message as well when identities are pinned (xfed.security.messages); this signature,
under meta `dh_sig`, keeps the exchange authenticated over any Comm, signing or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from xfed.aggregation.settings import Otp
from xfed.crypto import generate_keypair, named_group, pad_stream, shared_secret, validate_public
from xfed.crypto.dh import DhGroup
from xfed.crypto.pads import DEFAULT_LANES, PadStream
from xfed.errors import FrameError, SecurityError

TAG_DH = "otp/dh"


@dataclass(frozen=True)
class OtpSettings:
    """What the pad code reads of a validated `encryption.otp` (settings.Otp), under the names crypto uses.

    A view, not a parser: `Otp` checked every value once with the stage's train_params."""

    bits: int                       # key_bitlength: fixed-point modulus 2^64 or 2^128
    group_bits: int                 # key_exchange.key_bitlength
    optimized: bool                 # key_exchange.optimized: short exponents
    csprng: str                     # csprng.name
    method: str                     # csprng.method (hmac_drbg's hash)
    neighbours: int | None          # pad peers per party (SecAgg+-style sparse graph); None: every other party
    # not settings: fixed by the protocol (both ends of a pair must agree)
    frac_bits: int | None = None    # None: 32 at 64 bits (XFL's scale), 64 at 128 bits
    lanes: int = DEFAULT_LANES      # sub-streams per pair

    @classmethod
    def of(cls, otp: Otp) -> OtpSettings:
        return cls(bits=otp.key_bitlength, group_bits=otp.key_exchange.key_bitlength,
                   optimized=otp.key_exchange.optimized, csprng=otp.csprng.name, method=otp.csprng.method,
                   neighbours=otp.neighbours)


def pad_peers(parties: list[str], me: str, neighbours: int | None = None) -> list[str]:
    """The parties `me` shares a pad stream with.

    None (the default) or neighbours >= len(parties) - 1: every other party. Otherwise the sparse
    pairing graph of SecAgg+ in its deterministic form: the parties in sorted order on a ring, each
    paired with the neighbours/2 nearest on either side (a circulant graph, connected and symmetric:
    b is a's pad peer iff a is b's), so a party draws `neighbours` pad streams, not N-1, and the
    key exchange sends N * neighbours values, not N * (N-1). docs/SECAGG.md says what it costs."""
    ring = sorted(set(parties))
    if me not in ring:
        raise ValueError(f"{me!r} is not one of the masked parties")
    n = len(ring)
    if neighbours is None or neighbours >= n - 1:
        return [p for p in ring if p != me]
    i = ring.index(me)
    near = {ring[(i + d) % n] for k in range(1, neighbours // 2 + 1) for d in (k, -k)}
    return [p for p in ring if p in near]


def exchange_publics(comm: Any, peers: list[str], *, session: str, group: DhGroup, public: int,
                     identity_key: Any = None, identities: Mapping[str, str] | None = None,
                     timeout: float | None = None) -> dict[str, int]:
    """Send our public value to every peer, receive and validate theirs: {peer: public int}.

    With `identity_key` (xfed.security IdentityKey) each value we send is signed for its receiver;
    with `identities` ({node: Ed25519 public hex}) every received value must carry a valid signature
    by its sender's pinned key, else SecurityError naming the pair.
    """
    from xfed.security import sign_dh_public, verify_dh_public  # cryptography only; kept local

    me = comm.node_id
    if identities and identity_key is None:
        raise SecurityError(f"{me}: fed_conf.json pins node identities but this node has no identity key "
                            "(create one with `xfed.py keygen`)")
    for peer in peers:
        meta: dict[str, Any] = {"group": group.bits, "public": format(public, "x"), "session": session}
        if identity_key is not None:
            meta["dh_sig"] = sign_dh_public(identity_key, session=session, receiver=peer, group_bits=group.bits,
                                         value=public)
        comm.send(peer, TAG_DH, meta=meta)
    got = comm.gather(peers, TAG_DH, timeout=timeout)
    publics: dict[str, int] = {}
    for peer in peers:
        meta = got[peer].meta
        pair = f"DH public value {peer} -> {me}"
        text = meta.get("public")
        if meta.get("group") != group.bits or not isinstance(text, str) or not 0 < len(text) <= 2 * group.byte_length:
            raise FrameError(f"{pair}: expected a ffdhe{group.bits} value in hex, got group {meta.get('group')!r}")
        if meta.get("session") != session:
            raise SecurityError(f"{pair}: made for session {str(meta.get('session'))[:40]!r}, not {session!r} (replayed?)")
        try:
            value = int(text, 16)
            validate_public(group, value)
        except ValueError as exc:
            raise SecurityError(f"{pair}: rejected ({exc})") from None
        if identities:
            pinned = identities.get(peer)
            if not pinned:
                raise SecurityError(f"{pair}: fed_conf.json pins identities but none for {peer}")
            sig = meta.get("dh_sig")
            if not isinstance(sig, str):
                raise SecurityError(f"{pair}: unsigned, but identities are pinned")
            verify_dh_public(pinned, sig, session=session, sender=peer, receiver=me, group_bits=group.bits,
                             value=value)
        publics[peer] = value
    return publics


def agree_pad_streams(comm: Any, peers: list[str], settings: OtpSettings, *, session: str,
                      identity_key: Any = None, identities: Mapping[str, str] | None = None,
                      timeout: float | None = None) -> dict[str, PadStream]:
    """One fresh key pair for this session, DH with every peer, one pad stream per pair."""
    group = named_group(settings.group_bits)
    private, public = generate_keypair(group, optimized=settings.optimized)
    publics = exchange_publics(comm, peers, session=session, group=group, public=public,
                               identity_key=identity_key, identities=identities, timeout=timeout)
    me = comm.node_id
    return {peer: pad_stream(shared_secret(group, private, y), csprng=settings.csprng, method=settings.method,
                             session=session, node_a=me, node_b=peer, lanes=settings.lanes)
            for peer, y in publics.items()}
