"""Round key material of dropout-tolerant secure aggregation, without any Comm (unit-testable).

Per round r of epoch e, label trainer u draws a fresh mask key pair (s_u, g^s_u) in the stage's
RFC 7919 group and a fresh 32-byte self-mask seed b_u, splits s_u and b_u into t-of-n Shamir
shares (x = 1 + u's position among the epoch's members) and sends peer v, in one message, its
public value (signed when identities are pinned), the commitment to b_u and v's two shares sealed
with AES-256-GCM under the pair's share key (derived from the epoch's *channel* DH secret, which is
never shared: a reconstructed s_u therefore opens none of the sealed shares).

`Ledger` is the honest trainer's rule: within a round it reveals, for any party, either its share
of that party's self-mask seed (the party survived) or its share of that party's mask key (it
dropped), never both; an aggregator asking for both is refused and named.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Mapping

import gmpy2

from xfed.crypto import generate_keypair, validate_public
from xfed.crypto.dh import DhGroup
from xfed.crypto.selfmask import SEED_BYTES, seed_commitment
from xfed.crypto.shamir import (
    SHARE_BYTES,
    Share,
    ShareError,
    combine,
    decode_share,
    encode_share,
    open_share,
    seal_share,
    split,
)
from xfed.errors import FrameError, JobError, SecurityError


def round_session(epoch_session: str, round_idx: int) -> str:
    return f"{epoch_session}/r{int(round_idx)}"


def indices(members: list[str]) -> dict[str, int]:
    """Shamir x of every member: 1 + its position in sorted order."""
    return {m: i + 1 for i, m in enumerate(sorted(members))}


@dataclass
class OwnRound:
    """What a trainer draws for one round: mask key, self-mask seed, their shares for every member."""

    private: int
    public: int
    seed: bytes
    commit: str
    key_shares: dict[int, Share]
    seed_shares: dict[int, Share]

    @classmethod
    def draw(cls, group: DhGroup, *, optimized: bool, t: int, members: list[str], session: str,
             owner: str) -> OwnRound:
        private, public = generate_keypair(group, optimized=optimized)
        seed = secrets.token_bytes(SEED_BYTES)
        xs = sorted(indices(members).values())
        return cls(private, public, seed, seed_commitment(seed, session=session, owner=owner),
                   split(private, t, xs), split(int.from_bytes(seed, "big"), t, xs))


@dataclass(frozen=True)
class HeldShares:
    """What a trainer holds for one peer's round: its public value, commitment and our two shares."""

    public: int
    commit: str
    key_share: Share
    seed_share: Share


def _bound(public: int, commit: str) -> bytes:
    """The clear fields of a keys message the seal authenticates (so a broker cannot swap them)."""
    return format(public, "x").encode() + b"|" + commit.encode()


def keys_message(own: OwnRound, *, share_key: bytes, epoch_session: str, epoch: int, round_idx: int,
                 sender: str, receiver: str, x_receiver: int, group_bits: int, identity_key: Any = None) -> dict:
    """The meta of sender's round-keys message for `receiver`."""
    plain = encode_share(own.key_shares[x_receiver]) + encode_share(own.seed_shares[x_receiver])
    sealed = seal_share(share_key, plain, session=epoch_session, epoch=epoch, round_idx=round_idx,
                        sender=sender, receiver=receiver, bound=_bound(own.public, own.commit))
    meta = {"round": int(round_idx), "epoch": int(epoch), "public": format(own.public, "x"),
            "commit": own.commit, "sealed": sealed.hex()}
    if identity_key is not None:
        from xfed.security import sign_dh_public

        meta["dh_sig"] = sign_dh_public(identity_key, session=round_session(epoch_session, round_idx),
                                        receiver=receiver, group_bits=group_bits, value=own.public)
    return meta


def open_keys_message(meta: Mapping[str, Any], *, group: DhGroup, share_key: bytes, epoch_session: str,
                      epoch: int, round_idx: int, sender: str, receiver: str, x_receiver: int,
                      pinned: str | None = None) -> HeldShares:
    """Check and open one round-keys message; SecurityError / FrameError naming the pair."""
    pair = f"round {round_idx} keys {sender} -> {receiver}"
    if meta.get("round") != round_idx or meta.get("epoch") != epoch:
        raise SecurityError(f"{pair}: made for epoch {meta.get('epoch')!r} round {meta.get('round')!r} (replayed?)")
    text, commit, sealed = meta.get("public"), meta.get("commit"), meta.get("sealed")
    if not (isinstance(text, str) and 0 < len(text) <= 2 * group.byte_length and isinstance(commit, str)
            and len(commit) == 64 and isinstance(sealed, str) and len(sealed) <= 1024):
        raise FrameError(f"{pair}: malformed (public, commit, sealed)")
    try:
        public = int(text, 16)
        validate_public(group, public)
        blob = bytes.fromhex(sealed)
        int(commit, 16)
    except ValueError as exc:
        raise SecurityError(f"{pair}: rejected ({exc})") from None
    if pinned is not None:
        from xfed.security import verify_dh_public

        sig = meta.get("dh_sig")
        if not isinstance(sig, str):
            raise SecurityError(f"{pair}: unsigned, but identities are pinned")
        verify_dh_public(pinned, sig, session=round_session(epoch_session, round_idx), sender=sender,
                         receiver=receiver, group_bits=group.bits, value=public)
    try:
        plain = open_share(share_key, blob, session=epoch_session, epoch=epoch, round_idx=round_idx,
                           sender=sender, receiver=receiver, bound=_bound(public, commit))
    except ShareError as exc:
        raise SecurityError(f"{pair}: {exc}") from None
    if len(plain) != 2 * SHARE_BYTES:
        raise SecurityError(f"{pair}: sealed shares have the wrong length")
    return HeldShares(public, commit, decode_share(x_receiver, plain[:SHARE_BYTES]),
                      decode_share(x_receiver, plain[SHARE_BYTES:]))


@dataclass
class Ledger:
    """Which parties' shares this trainer revealed, per round: never a seed share and a key share of one party."""

    seeds: dict[int, set[str]] = field(default_factory=dict)
    keys: dict[int, set[str]] = field(default_factory=dict)

    def allow(self, round_idx: int, *, me: str, asker: str, members: list[str], survivors: list[str],
              dropped: list[str], floor: int) -> None:
        """SecurityError naming `asker` unless revealing seeds of `survivors` and keys of `dropped` is safe."""
        where = f"{me}: round {round_idx}: {asker} asked"
        s, d = set(survivors), set(dropped)
        if len(s) != len(survivors) or len(d) != len(dropped) or not s | d <= set(members):
            raise SecurityError(f"{where} about parties outside the round's members or twice: refused")
        both = sorted((s & d) | (s & self.keys.get(round_idx, set())) | (d & self.seeds.get(round_idx, set())))
        if both:
            raise SecurityError(f"{where} for both the self-mask share and the key share of {', '.join(both)}; "
                                f"refused (that would unmask {'its' if len(both) == 1 else 'their'} update): "
                                f"{asker} is not following the protocol")
        if me in d:
            raise SecurityError(f"{where} for this node's own mask key share: refused")
        if me not in s or len(s) < floor:
            raise SecurityError(f"{where} with survivors {sorted(s)} ({len(s)} < {floor} or without this node): refused")
        self.seeds.setdefault(round_idx, set()).update(s)
        self.keys.setdefault(round_idx, set()).update(d)


def reconstruct_seed(owner: str, shares: list[Share], t: int, *, commit: str, session: str) -> bytes:
    """b_owner from >= t shares, checked against its commitment (JobError naming the owner)."""
    try:
        value = combine(shares, t)
    except ShareError as exc:
        raise JobError(f"self-mask seed of {owner}: {exc}") from None
    if value >> (8 * SEED_BYTES):
        raise JobError(f"self-mask seed of {owner}: reconstructed value is out of range (a wrong share)")
    seed = value.to_bytes(SEED_BYTES, "big")
    if seed_commitment(seed, session=session, owner=owner) != commit:
        raise JobError(f"self-mask seed of {owner}: does not match its commitment (a wrong or forged share)")
    return seed


def reconstruct_key(owner: str, shares: list[Share], t: int, *, group: DhGroup, public: int) -> int:
    """s_owner from >= t shares, checked against owner's public value g^s (JobError naming the owner)."""
    try:
        private = combine(shares, t)
    except ShareError as exc:
        raise JobError(f"mask key of {owner}: {exc}") from None
    if not 2 <= private < group.q or int(gmpy2.powmod(group.g, private, group.p)) != public:
        raise JobError(f"mask key of {owner}: does not match its public value (a wrong or forged share)")
    return private
