"""One-time-pad masking: pads cancel in the sum, are exactly the DRBG bytes, and hide each party's values."""

import hashlib
import re
from fractions import Fraction

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xfed.crypto import (
    encode,
    generate_keypair,
    mask,
    named_group,
    pad_stream,
    pad_words,
    shared_secret,
    sign_for,
    unmask_sum,
)


def _secret(seed: int, a: str, b: str) -> bytes:
    lo, hi = sorted((a, b))
    return hashlib.sha512(f"{seed}|{lo}|{hi}".encode()).digest()


def _all_streams(ids, seed=0, csprng="hmac_drbg", method="sha256", session="job/1/0", lanes=4):
    return {
        me: {p: pad_stream(_secret(seed, me, p), csprng=csprng, method=method, session=session,
                           node_a=me, node_b=p, lanes=lanes) for p in ids if p != me}
        for me in ids
    }


_shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


@st.composite
def _rounds(draw):
    n = draw(st.integers(2, 8))
    shapes = draw(st.dictionaries(st.from_regex(r"[a-z]{1,3}(\.[a-z0-9]{1,3}){0,2}", fullmatch=True), _shapes,
                                  min_size=1, max_size=4))
    parties = []
    for _ in range(n):
        values = {k: draw(hnp.arrays(np.float64, s, elements=st.floats(-1e3, 1e3))) for k, s in shapes.items()}
        parties.append((values, draw(st.floats(0.5, 100.0))))
    return shapes, parties


@given(case=_rounds(), bits=st.sampled_from([64, 128]), csprng=st.sampled_from(["hmac_drbg", "ctr_drbg"]),
       seed=st.integers(0, 2**32))
@settings(max_examples=30, deadline=None)
def test_decoded_aggregate_is_the_weighted_mean(case, bits, csprng, seed):
    shapes, parties = case
    n = len(parties)
    ids = [f"node-{i}" for i in range(n)]
    streams = _all_streams(ids, seed=seed, csprng=csprng)
    f = 32 if bits == 64 else 64
    for _round in range(2):  # the second round uses the streams' next words
        masked = [mask(v, bits=bits, weight=w, n_parties=n, self_id=i, peer_streams=streams[i], workers=0)
                  for i, (v, w) in zip(ids, parties, strict=True)]
        total_w = sum(w for _v, w in parties)
        got = unmask_sum(masked, bits=bits, divide_by=total_w)
        assert sorted(got) == sorted(shapes)
        for k, shape in shapes.items():
            assert got[k].shape == shape and got[k].dtype == np.float64
            # Exact rational reference (a float64 reference would carry its own rounding error).
            for j, value in enumerate(got[k].reshape(-1).tolist()):
                exact = sum(Fraction(w) * Fraction(float(v[k].reshape(-1)[j])) for v, w in parties) / Fraction(total_w)
                scale = sum(w * abs(float(v[k].reshape(-1)[j])) for v, w in parties) / total_w
                # n * 2^-f from rounding to fixed point, plus float64 rounding of w * x and of the result.
                assert abs(Fraction(value) - exact) <= n * 2.0**-f + 4e-16 * scale


@given(values=hnp.arrays(np.float64, st.integers(16, 64), elements=st.floats(-10, 10)),
       bits=st.sampled_from([64, 128]), seed=st.integers(0, 2**32))
@settings(max_examples=20, deadline=None)
def test_masked_values_are_unlike_the_plaintext_and_change_with_the_pad_alone(values, bits, seed):
    ids = ["a", "b", "c"]
    plain = encode(values, bits=bits, n_parties=3)
    one = mask({"x": values}, bits=bits, n_parties=3, self_id="b", peer_streams=_all_streams(ids, seed)["b"], workers=0)
    two = mask({"x": values}, bits=bits, n_parties=3, self_id="b", peer_streams=_all_streams(ids, seed + 1)["b"],
               workers=0)
    # Each word differs from the encoding and between two pads (chance of a clash: 2^-64 per word).
    assert np.all(one["x"] != plain)
    assert np.all(one["x"] != two["x"])
    # The masked words look uniform: about half the bits set, unrelated to the small plaintext.
    bits_set = np.unpackbits(one["x"].view(np.uint8)).mean()
    assert 0.3 < bits_set < 0.7


@pytest.mark.parametrize("bits", [64, 128])
def test_lower_id_adds_the_pad_and_higher_subtracts_it(bits):
    from xfed.crypto import add_into, sub_into

    secret = bytes(range(64))
    x = {"t": np.array([1.5, -2.0, 0.25])}
    enc = encode(x["t"], bits=bits, n_parties=2)
    low = mask(x, bits=bits, n_parties=2, self_id="alice", workers=0,
               peer_streams={"bob": pad_stream(secret, session="s", node_a="alice", node_b="bob")})
    high = mask(x, bits=bits, n_parties=2, self_id="bob", workers=0,
                peer_streams={"alice": pad_stream(secret, session="s", node_a="bob", node_b="alice")})
    pad = pad_words(pad_stream(secret, session="s", node_a="alice", node_b="bob"), enc.size)
    pad = pad.reshape(enc.shape)
    assert np.array_equal(low["t"], add_into(enc.copy(), pad, bits))
    assert np.array_equal(high["t"], sub_into(enc.copy(), pad, bits))
    assert sign_for("alice", "bob") == 1 and sign_for("bob", "alice") == -1
    assert sign_for("node-10", "node-2") == 1  # Python string order, the same on every node


def test_tensor_order_is_sorted_names_whatever_the_dict_order():
    ids = ["a", "b"]
    v = {"z": np.ones(3), "m": np.arange(4.0), "a.b": np.array(2.0)}
    one = mask(v, n_parties=2, self_id="a", peer_streams=_all_streams(ids)["a"], workers=0)
    two = mask(dict(reversed(list(v.items()))), n_parties=2, self_id="a", peer_streams=_all_streams(ids)["a"],
               workers=0)
    assert list(one) == sorted(v)
    for k in v:
        assert np.array_equal(one[k], two[k])


def test_real_diffie_hellman_end_to_end_three_parties():
    group = named_group(2048)
    ids = ["n1", "n2", "n3"]
    keys = {i: generate_keypair(group) for i in ids}
    publics = {i: group.decode_public(group.encode_public(keys[i][1])) for i in ids}
    streams = {
        me: {p: pad_stream(shared_secret(group, keys[me][0], publics[p]), session="job/0/0", node_a=me, node_b=p)
             for p in ids if p != me}
        for me in ids
    }
    rng = np.random.default_rng(5)
    data = {i: {"w": rng.normal(size=(5, 3)).astype(np.float32)} for i in ids}
    masked = [mask(data[i], weight=2.0, n_parties=3, self_id=i, peer_streams=streams[i], workers=0) for i in ids]
    got = unmask_sum(masked, divide_by=6.0)["w"]
    want = sum(data[i]["w"].astype(np.float64) for i in ids) / 3
    assert np.allclose(got, want, atol=3 * 2.0**-32)


def test_errors_name_the_tensor_and_leave_the_streams_untouched():
    ids = ["a", "b"]
    streams = _all_streams(ids)
    before = pad_words(_all_streams(ids)["a"]["b"], 4)
    with pytest.raises(ValueError, match="'bad'"):
        mask({"good": np.ones(2), "bad": np.array([np.nan])}, n_parties=2, self_id="a", peer_streams=streams["a"],
             workers=0)
    with pytest.raises(OverflowError, match="'huge'"):
        mask({"huge": np.array([1e12])}, n_parties=2, self_id="a", peer_streams=streams["a"], workers=0)
    assert np.array_equal(pad_words(streams["a"]["b"], 4), before)
    with pytest.raises(ValueError, match="itself"):
        mask({"x": np.ones(1)}, n_parties=2, self_id="a", peer_streams={"a": streams["a"]["b"]})
    with pytest.raises(ValueError, match="not the pad stream of the pair"):
        mask({"x": np.ones(1)}, n_parties=3, self_id="a", peer_streams={"c": streams["a"]["b"]})


def test_unmask_sum_refuses_mismatched_dicts():
    a = {"x": np.zeros(3, dtype=np.uint64), "y": np.zeros(2, dtype=np.uint64)}
    with pytest.raises(ValueError, match=re.escape("missing ['y']")):
        unmask_sum([a, {"x": a["x"]}])
    with pytest.raises(ValueError, match="tensor 'y' of masked dict #1"):
        unmask_sum([a, {"x": a["x"], "y": np.zeros(3, dtype=np.uint64)}])
    with pytest.raises(ValueError, match="tensor 'y' of masked dict #1"):
        unmask_sum([a, {"x": a["x"], "y": np.zeros(2, dtype=np.int64)}])
    with pytest.raises(ValueError, match="limbs"):
        unmask_sum([a], bits=128)
    with pytest.raises(ValueError, match="at least one"):
        unmask_sum([])
    with pytest.raises(ValueError, match="out"):
        unmask_sum([a], out={"x": np.zeros(4)})


def test_unmask_sum_decodes_into_warm_out_buffers():
    enc = [{"x": encode(np.array([1.0, -2.0]))}, {"x": encode(np.array([3.0, 4.0]))}]
    buf = {"x": np.full(2, 99.0)}
    res = unmask_sum(enc, divide_by=2.0, out=buf)
    assert res["x"] is buf["x"]
    assert buf["x"].tolist() == [2.0, 1.0]
    assert enc[0]["x"].tolist() == encode(np.array([1.0, -2.0])).tolist()  # inputs untouched


@given(n=st.integers(2, 8), bits=st.sampled_from([64, 128]), sign=st.sampled_from([1.0, -1.0]),
       f_drop=st.integers(0, 20))
@settings(max_examples=25, deadline=None)
def test_sums_at_the_edge_of_the_range_decode_exactly_and_beyond_it_are_refused(n, bits, sign, f_drop):
    f = (32 if bits == 64 else 64) - f_drop
    limit = 2.0 ** (bits - 1 - f) / n  # per-party bound on |weight * value|
    ids = [f"p{i}" for i in range(n)]
    streams = _all_streams(ids, csprng="ctr_drbg")
    edge = {"edge": np.array([sign * limit * (1 - 2.0**-30), 0.5])}
    masked = [mask(edge, bits=bits, frac_bits=f, n_parties=n, self_id=i, peer_streams=streams[i], workers=0)
              for i in ids]
    total = unmask_sum(masked, bits=bits, frac_bits=f)["edge"]
    want = n * edge["edge"]
    assert np.all(np.abs(total - want) <= n * 2.0**-f + 4e-16 * np.abs(want))  # no wrap-around
    over = {"edge": np.array([sign * limit * (1 + 2.0**-30), 0.5])}
    with pytest.raises(OverflowError, match="'edge'"):
        mask(over, bits=bits, frac_bits=f, n_parties=n, self_id=ids[0], peer_streams=streams[ids[0]], workers=0)


def test_parties_masking_from_several_threads_get_the_sequential_results():
    import threading

    ids = [f"t{i}" for i in range(4)]
    rng = np.random.default_rng(3)
    data = {i: {"w": rng.normal(size=(64, 33))} for i in ids}
    sequential = _all_streams(ids, csprng="ctr_drbg")
    want = {i: mask(data[i], n_parties=4, self_id=i, peer_streams=sequential[i], workers=0) for i in ids}
    threaded = _all_streams(ids, csprng="ctr_drbg")
    got = {}

    def run(i):
        got[i] = mask(data[i], n_parties=4, self_id=i, peer_streams=threaded[i], workers=0)

    threads = [threading.Thread(target=run, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for i in ids:
        assert np.array_equal(got[i]["w"], want[i]["w"])
    total = unmask_sum([got[i] for i in ids], divide_by=4)["w"]
    assert np.allclose(total, sum(data[i]["w"] for i in ids) / 4, atol=1e-8)
