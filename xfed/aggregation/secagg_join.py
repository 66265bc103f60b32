"""A restarted label trainer rejoining a running secure-aggregation stage: the messages, without a Comm.

docs/SECAGG.md §7. The restarted node X (incarnation k > 0, from the scheduler's membership
record) draws a fresh *channel* key pair and sends the root `sa/join` {incarnation, group, public,
dh_sig: {peer: signature}} on the mailboxes of incarnation k. The root reads the record once per
round; at the end of round r it admits X (if a round is left), opens epoch e + 1 and
- sends X `sa/welcome` {round: r + 1, epoch, incarnations, contributors, joined}, then the round's
  mean (`agg/r/down`, the global model X continues from);
- names X in the mean's meta to every member: `joined` {X: {incarnation, group, public, dh_sig}}.
Every member that received the mean answers X with `sa/chan` {group, public, session, dh_sig}
(its own fresh channel key pair for X) and derives the pair's share key; X gathers those answers.
Two nodes admitted together use their two join publics directly. Every value is signed for its
receiver under the session `join_session(...)`, which names X and k: a value from another
incarnation, job, stage or attempt does not verify. Round keys (fresh every round anyway) are
then exchanged as before from round r + 1 on, under the new epoch's session.
"""

from __future__ import annotations

from typing import Any, Mapping

from xfed.aggregation.context import AggregationContext
from xfed.crypto import shared_secret, validate_public
from xfed.crypto.dh import DhGroup
from xfed.crypto.shamir import share_key
from xfed.errors import FrameError, SecurityError

TAG_JOIN = "sa/join"
TAG_WELCOME = "sa/welcome"
TAG_CHAN = "sa/chan"


def join_session(ctx: AggregationContext, node: str, incarnation: int) -> str:
    return f"{ctx.job_id}/{ctx.stage_id}/{ctx.attempt}/join/{node}/i{int(incarnation)}"


def _sign(identity_key: Any, *, session: str, receiver: str, group: DhGroup, public: int) -> str | None:
    if identity_key is None:
        return None
    from xfed.security import sign_dh_public  # cryptography only; kept local

    return sign_dh_public(identity_key, session=session, receiver=receiver, group_bits=group.bits, value=public)


def _public(meta: Mapping[str, Any], group: DhGroup, what: str) -> int:
    text = meta.get("public")
    if meta.get("group") != group.bits or not isinstance(text, str) or not 0 < len(text) <= 2 * group.byte_length:
        raise FrameError(f"{what}: expected a ffdhe{group.bits} public value in hex")
    try:
        value = int(text, 16)
        validate_public(group, value)
    except ValueError as exc:
        raise SecurityError(f"{what}: public value rejected ({exc})") from None
    return value


def _verify(pinned: Mapping[str, str], sig: Any, *, session: str, sender: str, receiver: str, group: DhGroup,
            value: int, what: str) -> None:
    if not pinned:
        return
    key = pinned.get(sender)
    if not key:
        raise SecurityError(f"{what}: fed_conf.json pins identities but none for {sender}")
    if not isinstance(sig, str):
        raise SecurityError(f"{what}: unsigned, but identities are pinned")
    from xfed.security import verify_dh_public

    verify_dh_public(key, sig, session=session, sender=sender, receiver=receiver, group_bits=group.bits, value=value)


def join_message(*, node: str, incarnation: int, peers: list[str], session: str, group: DhGroup, public: int,
                 identity_key: Any = None) -> dict[str, Any]:
    """X's request to the root: its fresh channel public value, signed for every peer."""
    sigs = {p: _sign(identity_key, session=session, receiver=p, group=group, public=public) for p in peers}
    return {"incarnation": int(incarnation), "group": group.bits, "public": format(public, "x"),
            "dh_sig": {p: s for p, s in sigs.items() if s is not None}}


def check_join(meta: Mapping[str, Any], *, node: str, incarnation: int, group: DhGroup) -> dict[str, Any]:
    """The root's check of a join request: the entry it forwards as `joined[node]` (FrameError/SecurityError)."""
    what = f"join request of {node} (incarnation {incarnation})"
    if meta.get("incarnation") != incarnation:
        raise SecurityError(f"{what}: made for incarnation {meta.get('incarnation')!r} (replayed?)")
    public = _public(meta, group, what)
    sigs = meta.get("dh_sig")
    if not isinstance(sigs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in sigs.items()):
        raise FrameError(f"{what}: dh_sig must map node ids to hex signatures")
    return {"incarnation": int(incarnation), "group": group.bits, "public": format(public, "x"), "dh_sig": dict(sigs)}


def joiner_public(entry: Mapping[str, Any], *, joiner: str, me: str, session: str, group: DhGroup,
                  pinned: Mapping[str, str]) -> int:
    """A member's check of `joined[joiner]` from the root: the joiner's channel public, signed for `me`."""
    what = f"channel public value {joiner} -> {me} (rejoin)"
    value = _public(entry, group, what)
    sigs = entry.get("dh_sig") if isinstance(entry.get("dh_sig"), dict) else {}
    _verify(pinned, sigs.get(me), session=session, sender=joiner, receiver=me, group=group, value=value, what=what)
    return value


def chan_message(*, session: str, receiver: str, group: DhGroup, public: int, identity_key: Any = None) -> dict:
    """A member's answer to a joiner: its fresh channel public value for that pair."""
    meta: dict[str, Any] = {"group": group.bits, "public": format(public, "x"), "session": session}
    sig = _sign(identity_key, session=session, receiver=receiver, group=group, public=public)
    if sig is not None:
        meta["dh_sig"] = sig
    return meta


def open_chan(meta: Mapping[str, Any], *, sender: str, me: str, session: str, group: DhGroup,
              pinned: Mapping[str, str]) -> int:
    """The joiner's check of a member's `sa/chan`: the member's channel public for this pair."""
    what = f"channel public value {sender} -> {me} (rejoin)"
    if meta.get("session") != session:
        raise SecurityError(f"{what}: made for session {str(meta.get('session'))[:60]!r}, not {session!r} (replayed?)")
    value = _public(meta, group, what)
    _verify(pinned, meta.get("dh_sig"), session=session, sender=sender, receiver=me, group=group, value=value,
            what=what)
    return value


def pair_share_key(group: DhGroup, private: int, peer_public: int, *, session: str, me: str, peer: str) -> bytes:
    """The share key of a pair keyed at a rejoin (the join session separates it from every other)."""
    return share_key(shared_secret(group, private, peer_public), session=session, node_a=me, node_b=peer)


def parse_welcome(meta: Mapping[str, Any], *, members: list[str], root: str) -> tuple[int, int, dict[str, int],
                                                                                      list[str], dict[str, Any]]:
    """(first round, epoch, incarnations, last round's contributors, joined) of the root's welcome."""
    what = f"welcome from {root}"
    first, epoch = meta.get("round"), meta.get("epoch")
    incs, contributors, joined = meta.get("incarnations"), meta.get("contributors"), meta.get("joined")
    if not (isinstance(first, int) and first >= 1 and isinstance(epoch, int) and epoch > 0
            and isinstance(incs, dict) and isinstance(contributors, list) and isinstance(joined, dict)):
        raise FrameError(f"{what}: malformed")
    if not all(n in members and isinstance(k, int) and not isinstance(k, bool) and k >= 0 for n, k in incs.items()):
        raise FrameError(f"{what}: incarnations name non-members or are not counts")
    if not all(n in members for n in list(contributors) + list(joined)):
        raise FrameError(f"{what}: names non-members")
    return first, epoch, dict(incs), list(contributors), dict(joined)
