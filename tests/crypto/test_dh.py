"""RFC 7919 Diffie-Hellman: constants match the shared vectors, bad peer values are refused, round trips agree."""

import json
import pathlib

import gmpy2
import pytest

from xfed.crypto import DhGroup, generate_keypair, named_group, shared_secret, validate_public

VECTORS = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "vectors"


def test_group_constants_in_code_match_the_shared_vectors():
    groups = json.loads((VECTORS / "dh_groups.json").read_text())["groups"]
    ffdhe = [g for g in groups if g["name"].startswith("ffdhe")]
    assert len(ffdhe) == 5
    for g in ffdhe:
        group = named_group(g["name"])
        assert group.p == int(g["p"], 16)
        assert group.q == int(g["q"], 16)
        assert group.g == int(g["g"]) == 2
        assert group.bits == int(g["bits"])
        assert named_group(int(g["bits"])) is group


def test_unknown_group_is_refused():
    for bad in (1024, "ffdhe1536", "modp2048", True, None):
        with pytest.raises(ValueError, match="DH group"):
            named_group(bad)


@pytest.mark.parametrize("bits", [2048, 3072])
@pytest.mark.parametrize("optimized", [True, False])
def test_round_trip_between_two_keypairs_agrees(bits, optimized):
    group = named_group(bits)
    a_priv, a_pub = generate_keypair(group, optimized=optimized)
    b_priv, b_pub = generate_keypair(group, optimized=optimized)
    validate_public(group, a_pub)
    secret = shared_secret(group, a_priv, b_pub)
    assert secret == shared_secret(group, b_priv, a_pub)
    assert len(secret) == group.byte_length == bits // 8
    assert secret != shared_secret(group, a_priv, a_pub)
    if optimized:
        assert a_priv < 1 << group.short_exponent_bits
    assert group.decode_public(group.encode_public(a_pub)) == a_pub


def test_secret_keeps_leading_zero_bytes():
    group = named_group(2048)
    # g^x = 2^x: x = 2000 gives a value with 47 leading zero bits in a 2048-bit field.
    secret = shared_secret(group, 2000, 2)
    assert len(secret) == 256 and secret[:5] == b"\0" * 5 and int.from_bytes(secret, "big") == 1 << 2000


def _quadratic_non_residue(p: int) -> int:
    y = 3
    while gmpy2.legendre(y, p) != -1:
        y += 1
    return y


@pytest.mark.parametrize("bits", [2048, 3072])
def test_invalid_peer_values_are_refused(bits):
    group = named_group(bits)
    p = group.p
    qnr = _quadratic_non_residue(p)
    assert pow(qnr, group.q, p) == p - 1
    bad = [0, 1, p - 1, p, p + 1, 1 << bits, (1 << bits) + 5, -2, p - 2, qnr]
    priv, _pub = generate_keypair(group)
    for y in bad:
        with pytest.raises(ValueError):
            validate_public(group, y)
        with pytest.raises(ValueError):
            shared_secret(group, priv, y)
    for y in ("12345", 2.0, None, True):
        with pytest.raises(ValueError, match="integer"):
            validate_public(group, y)


def test_decode_public_refuses_wrong_length_and_bad_values():
    group = named_group(2048)
    with pytest.raises(ValueError, match="256 bytes"):
        group.decode_public(b"\x02" * 10)
    with pytest.raises(ValueError):
        group.decode_public((group.p - 1).to_bytes(256, "big"))


def test_private_exponent_out_of_range_is_refused():
    group = named_group(2048)
    _priv, pub = generate_keypair(group)
    for bad in (0, 1, group.q, -5):
        with pytest.raises(ValueError, match="private"):
            shared_secret(group, bad, pub)


def test_custom_group_validates_parameters():
    with pytest.raises(ValueError):
        DhGroup(10)
    small = DhGroup(23)  # safe prime: q = 11
    assert small.q == 11
    validate_public(small, 4)  # 4 = 2^2 is a quadratic residue mod 23
    with pytest.raises(ValueError):
        validate_public(small, 5)  # 5 is a non-residue mod 23
