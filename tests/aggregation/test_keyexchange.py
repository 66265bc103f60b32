"""The DH public-value exchange: settings from XFL keys, signatures with pinned identities, tampering caught."""

from __future__ import annotations

import pytest

from xfed.aggregation.keyexchange import OtpSettings, agree_pad_streams
from xfed.aggregation.settings import encryption_of
from xfed.crypto import pad_words
from xfed.errors import ConfigError, SecurityError
from xfed.security.identity import generate

from .conftest import run_parties

SETTINGS = OtpSettings.of(encryption_of({"otp": {"key_exchange": {"key_bitlength": 2048}}}).otp)


def test_settings_read_xfl_keys_and_refuse_bad_values():
    s = encryption_of({"otp": {"key_bitlength": 128, "data_type": "torch.Tensor",
                               "key_exchange": {"key_bitlength": 4096, "optimized": False},
                               "csprng": {"name": "ctr_drbg", "method": "sha256"}}}).otp
    assert (s.key_bitlength, s.key_exchange.key_bitlength, s.key_exchange.optimized, s.csprng.name) == (
        128, 4096, False, "ctr_drbg")
    for bad, where in (({"key_bitlength": 32}, "key_bitlength"), ({"key_exchange": {"key_bitlength": 1024}},
                                                                   "key_exchange"),
                       ({"csprng": {"name": "md5"}}, "csprng.name")):
        with pytest.raises(ConfigError, match=where):
            encryption_of({"otp": bad})


def _agree(ctxs, nodes, keys=None, identities=None):
    def fn(node):
        return lambda: agree_pad_streams(ctxs[node].comm, [n for n in nodes if n != node], SETTINGS,
                                         session="j/0/0", identity_key=(keys or {}).get(node),
                                         identities=identities)
    return run_parties({n: fn(n) for n in nodes}, timeout=20)


@pytest.mark.integration
def test_pairs_agree_on_the_same_pad_stream(federation):
    nodes = ["a", "b", "c"]
    streams = _agree(federation(nodes), nodes)
    assert (pad_words(streams["a"]["b"], 8) == pad_words(streams["b"]["a"], 8)).all()
    assert not (pad_words(streams["a"]["c"], 8) == pad_words(streams["b"]["c"], 8)).all()


@pytest.mark.integration
def test_signed_exchange_succeeds_and_a_tampered_value_names_the_pair(federation):
    nodes = ["a", "b"]
    keys = {n: generate(n) for n in nodes}
    pins = {n: k.public_hex for n, k in keys.items()}
    streams = _agree(federation(nodes), nodes, keys, pins)
    assert (pad_words(streams["a"]["b"], 4) == pad_words(streams["b"]["a"], 4)).all()

    # a broker in the middle: b's value reaches a signed by a key that is not b's pinned one
    forged = dict(keys, b=generate("b"))
    with pytest.raises(SecurityError, match="b -> a: signature does not verify"):
        _agree(federation(nodes), nodes, forged, pins)


@pytest.mark.integration
def test_pinned_identities_without_own_key_or_signature_are_refused(federation):
    nodes = ["a", "b"]
    pins = {n: generate(n).public_hex for n in nodes}
    with pytest.raises(SecurityError, match="no identity key"):
        _agree(federation(nodes), nodes, None, pins)


@pytest.mark.parametrize("n,k", [(3, 2), (8, 2), (8, 4), (32, 6), (33, 10), (5, 4), (5, 8)])
def test_sparse_pad_peers_are_symmetric_connected_and_k_per_party(n, k):
    from xfed.aggregation.keyexchange import pad_peers

    parties = [f"p{i:02d}" for i in range(n)]
    peers = {p: pad_peers(parties, p, k) for p in parties}
    for p, mine in peers.items():
        assert len(mine) == min(k, n - 1) and p not in mine
        assert all(p in peers[q] for q in mine)  # every pad has both ends: they cancel in the sum
    seen, todo = set(), [parties[0]]  # connected: the aggregator alone learns only the total
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo += peers[p]
    assert seen == set(parties)
    assert pad_peers(parties, "p01") == [p for p in parties if p != "p01"]


def test_neighbours_is_validated():
    from xfed.aggregation.keyexchange import OtpSettings
    from xfed.aggregation.settings import encryption_of
    from xfed.errors import ConfigError

    assert OtpSettings.of(encryption_of({"otp": {"neighbours": 4}}).otp).neighbours == 4
    for bad in (3, 0, "x"):
        with pytest.raises(ConfigError, match="encryption.otp"):
            encryption_of({"otp": {"neighbours": bad}})
    with pytest.raises(ConfigError, match="encryption.otp.neighbours: .*cannot be combined with dropout"):
        encryption_of({"otp": {"neighbours": 2, "dropout": {"threshold": 2}}})
