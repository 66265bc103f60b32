"""Shamir t-of-n over GF(2^521 - 1) and sealed shares: reconstruction, wrong/missing/forged shares, AES-GCM binding."""

from __future__ import annotations

import itertools
import secrets

import pytest

from xfed.crypto.shamir import (
    PRIME,
    Share,
    ShareError,
    combine,
    decode_share,
    encode_share,
    open_share,
    seal_share,
    share_key,
    split,
)


@pytest.mark.parametrize("t,n", [(1, 1), (2, 3), (3, 4), (5, 8), (8, 8)])
def test_any_t_shares_give_the_secret(t, n):
    secret = secrets.randbelow(PRIME)
    shares = split(secret, t, list(range(1, n + 1)))
    for subset in itertools.islice(itertools.combinations(shares.values(), t), 20):
        assert combine(list(subset), t) == secret
    assert combine(list(shares.values()), t) == secret  # extras checked, and consistent


def test_fewer_than_t_shares_are_refused_and_say_nothing():
    secret = 12345
    shares = split(secret, 3, [1, 2, 3, 4])
    with pytest.raises(ShareError, match="2 share"):
        combine([shares[1], shares[2]], 3)
    # t-1 shares are consistent with every secret: interpolating them with any fake third point works
    fake = Share(9, secrets.randbelow(PRIME))
    assert combine([shares[1], shares[2], fake], 3) != secret


def test_a_wrong_share_is_detected_when_more_than_t_are_given():
    shares = list(split(777, 3, [1, 2, 3, 4, 5]).values())
    shares[4] = Share(shares[4].x, (shares[4].y + 1) % PRIME)
    with pytest.raises(ShareError, match="disagree"):
        combine(shares, 3)


def test_duplicate_and_out_of_range_shares_are_refused():
    shares = split(5, 2, [1, 2, 3])
    with pytest.raises(ShareError, match="duplicate"):
        combine([shares[1], shares[1]], 2)
    with pytest.raises(ShareError, match="out of range"):
        combine([shares[1], Share(2, PRIME)], 2)
    with pytest.raises(ValueError):
        split(PRIME, 2, [1, 2])
    with pytest.raises(ValueError):
        split(1, 2, [0, 1])
    with pytest.raises(ShareError):
        decode_share(1, b"\xff" * 66)


def test_share_bytes_round_trip():
    s = split(secrets.randbelow(PRIME), 2, [1, 2])[2]
    assert decode_share(2, encode_share(s)) == s


def test_sealed_shares_open_only_in_their_own_context():
    secret = secrets.token_bytes(384)
    k_ab = share_key(secret, session="j/0/0/e0", node_a="a", node_b="b")
    assert k_ab == share_key(secret, session="j/0/0/e0", node_a="b", node_b="a")  # same at both ends
    assert k_ab != share_key(secret, session="j/0/0/e1", node_a="a", node_b="b")
    ctx = dict(session="j/0/0/e0", epoch=0, round_idx=3, sender="a", receiver="b")
    sealed = seal_share(k_ab, b"share bytes", **ctx)
    assert open_share(k_ab, sealed, **ctx) == b"share bytes"
    for change in ({"round_idx": 4}, {"sender": "b", "receiver": "a"}, {"epoch": 1}, {"session": "j/0/1/e0"}):
        with pytest.raises(ShareError, match="does not open"):
            open_share(k_ab, sealed, **{**ctx, **change})
    forged = bytearray(sealed)
    forged[-1] ^= 1
    with pytest.raises(ShareError, match="does not open"):
        open_share(k_ab, bytes(forged), **ctx)
    other = share_key(secrets.token_bytes(384), session="j/0/0/e0", node_a="a", node_b="b")
    with pytest.raises(ShareError):
        open_share(other, sealed, **ctx)
