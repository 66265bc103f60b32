"""Round keys of dropout-tolerant secure aggregation without Redis: sealing, replays, forgery, the "never both" rule."""

from __future__ import annotations

import secrets

import pytest

from xfed.aggregation.secagg_keys import (
    Ledger,
    OwnRound,
    indices,
    keys_message,
    open_keys_message,
    reconstruct_key,
    reconstruct_seed,
    round_session,
)
from xfed.crypto import named_group
from xfed.crypto.shamir import Share, share_key
from xfed.errors import JobError, SecurityError
from xfed.security.identity import generate

MEMBERS = ["node-1", "node-2", "node-3", "node-4"]
GROUP = named_group(2048)
EPOCH_SESSION = "7/0/0/e0"


@pytest.fixture(scope="module")
def drawn():
    key = share_key(secrets.token_bytes(256), session=EPOCH_SESSION, node_a="node-1", node_b="node-2")
    own = OwnRound.draw(GROUP, optimized=True, t=3, members=MEMBERS, session=round_session(EPOCH_SESSION, 1),
                        owner="node-1")
    return key, own


def _msg(own, key, round_idx=1, identity=None):
    return keys_message(own, share_key=key, epoch_session=EPOCH_SESSION, epoch=0, round_idx=round_idx,
                        sender="node-1", receiver="node-2", x_receiver=indices(MEMBERS)["node-2"],
                        group_bits=2048, identity_key=identity)


def _open(meta, key, round_idx=1, pinned=None):
    return open_keys_message(meta, group=GROUP, share_key=key, epoch_session=EPOCH_SESSION, epoch=0,
                             round_idx=round_idx, sender="node-1", receiver="node-2",
                             x_receiver=indices(MEMBERS)["node-2"], pinned=pinned)


def test_shares_travel_sealed_and_reconstruct_the_round_secrets(drawn):
    key, own = drawn
    held = _open(_msg(own, key), key)
    assert held.public == own.public and held.key_share == own.key_shares[2]
    rs = round_session(EPOCH_SESSION, 1)
    shares = [own.seed_shares[x] for x in (1, 3, 4)]
    assert reconstruct_seed("node-1", shares, 3, commit=own.commit, session=rs) == own.seed
    keys = [held.key_share, own.key_shares[3], own.key_shares[4]]
    assert reconstruct_key("node-1", keys, 3, group=GROUP, public=own.public) == own.private


def test_a_broker_replaying_shares_of_another_round_is_refused(drawn):
    key, own = drawn
    old = _msg(own, key, round_idx=0)
    with pytest.raises(SecurityError, match="round 0 .*replayed"):
        _open(old, key, round_idx=1)
    relabelled = {**old, "round": 1}  # the broker rewrites the visible round: the seal still binds round 0
    with pytest.raises(SecurityError, match="does not open"):
        _open(relabelled, key, round_idx=1)


def test_a_forged_or_swapped_share_message_is_refused(drawn):
    key, own = drawn
    meta = _msg(own, key)
    sealed = bytearray(bytes.fromhex(meta["sealed"]))
    sealed[20] ^= 1
    with pytest.raises(SecurityError, match="does not open"):
        _open({**meta, "sealed": sealed.hex()}, key)
    with pytest.raises(SecurityError, match="rejected"):
        _open({**meta, "public": "1"}, key)


def test_with_identities_the_round_public_value_must_carry_its_signature(drawn):
    key, own = drawn
    ident = generate("node-1")
    meta = _msg(own, key, identity=ident)
    assert _open(meta, key, pinned=ident.public_hex).public == own.public
    other = OwnRound.draw(GROUP, optimized=True, t=3, members=MEMBERS, session="x", owner="node-1")
    with pytest.raises(SecurityError, match="signature does not verify"):
        _open({**meta, "public": format(other.public, "x")}, key, pinned=ident.public_hex)
    with pytest.raises(SecurityError, match="unsigned"):
        _open({k: v for k, v in meta.items() if k != "dh_sig"}, key, pinned=ident.public_hex)


def test_wrong_shares_fail_against_the_commitments(drawn):
    _, own = drawn
    rs = round_session(EPOCH_SESSION, 1)
    bad = [own.seed_shares[1], own.seed_shares[2], Share(3, (own.seed_shares[3].y + 1))]
    with pytest.raises(JobError, match="self-mask seed of node-1"):
        reconstruct_seed("node-1", bad, 3, commit=own.commit, session=rs)
    with pytest.raises(JobError, match="mask key of node-1: 2 share"):
        reconstruct_key("node-1", [own.key_shares[1], own.key_shares[2]], 3, group=GROUP, public=own.public)
    bad_keys = [own.key_shares[1], own.key_shares[2], Share(4, own.key_shares[4].y ^ 1)]
    with pytest.raises(JobError, match="does not match its public value"):
        reconstruct_key("node-1", bad_keys, 3, group=GROUP, public=own.public)


def test_never_both_shares_of_one_party_in_a_round():
    ledger = Ledger()
    ask = dict(me="node-1", asker="assist", members=MEMBERS, floor=3)
    ledger.allow(1, survivors=["node-1", "node-2", "node-3"], dropped=["node-4"], **ask)
    # a second request in the same round flipping node-4 (or node-3) is refused, naming the asker
    with pytest.raises(SecurityError, match="assist asked for both .* of node-3, node-4"):
        ledger.allow(1, survivors=["node-1", "node-2", "node-4"], dropped=["node-3"], **ask)
    with pytest.raises(SecurityError, match="of node-3"):
        ledger.allow(1, survivors=["node-1", "node-2"], dropped=["node-3", "node-4"], **{**ask, "floor": 2})
    ledger.allow(2, survivors=["node-1", "node-2", "node-4"], dropped=["node-3"], **ask)  # fresh keys next round
    with pytest.raises(SecurityError, match="this node's own mask key"):
        ledger.allow(3, survivors=["node-2", "node-3", "node-4"], dropped=["node-1"], **ask)
    with pytest.raises(SecurityError, match="< 3"):
        ledger.allow(4, survivors=["node-1", "node-2"], dropped=["node-3", "node-4"], **ask)
    with pytest.raises(SecurityError, match="outside"):
        ledger.allow(5, survivors=["node-1", "node-2", "node-9"], dropped=[], **ask)


def test_without_identities_a_swapped_public_value_or_commitment_does_not_open(drawn):
    key, own = drawn
    meta = _msg(own, key)
    other = OwnRound.draw(GROUP, optimized=True, t=3, members=MEMBERS, session="y", owner="node-1")
    with pytest.raises(SecurityError, match="does not open"):
        _open({**meta, "public": format(other.public, "x")}, key)
    with pytest.raises(SecurityError, match="does not open"):
        _open({**meta, "commit": other.commit}, key)
