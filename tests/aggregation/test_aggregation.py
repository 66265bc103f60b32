"""Plain and OTP aggregation with three label trainers on real Redis: equal to the weighted mean."""

from __future__ import annotations

import time

import numpy as np
import pytest

from xfed.aggregation import WEIGHT_KEY, make_leaf, make_root
from xfed.errors import JobError

from .conftest import run_parties

pytestmark = pytest.mark.integration

TRAINERS = ["node-1", "node-2", "node-3"]
OTP = {"otp": {"key_bitlength": 64, "key_exchange": {"key_bitlength": 2048, "optimized": True},
               "csprng": {"name": "hmac_drbg", "method": "sha512"}}}


def _tensors(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"lora_A": rng.normal(size=(4, 16)).astype(np.float32), "lora_B": rng.normal(size=(16, 4)).astype(np.float32),
            "scalar": np.float32(rng.normal()), "empty": np.zeros((0, 3), np.float32)}


def _expected(parts: list[tuple[dict, float]]) -> dict[str, np.ndarray]:
    total = sum(w for _, w in parts)
    return {k: sum(w * t[k].astype(np.float64) for t, w in parts) / total for k in parts[0][0]}


def _run(ctxs, encryption, rounds=2, root_trains=False, weights=(10.0, 30.0, 60.0)):
    initial = _tensors(99)

    def leaf_fn(node, weight, seed):
        def fn():
            leaf = make_leaf(ctxs[node], encryption)
            leaf.setup()
            start = leaf.receive_initial()
            outs = []
            for r in range(rounds):
                outs.append(leaf.aggregate(r, {k: v + seed + r for k, v in start.items()}, weight))
            return start, outs, leaf.last_round_stats
        return fn

    def root_fn():
        root = make_root(ctxs["assist"], encryption)
        root.setup()
        root.broadcast_initial(initial)
        outs = []
        for r in range(rounds):
            own = {k: v - r for k, v in initial.items()} if root_trains else None
            outs.append(root.aggregate(r, own, 5.0 if root_trains else 0.0))
        return outs, root.last_round_stats

    fns = {n: leaf_fn(n, w, i + 1) for i, (n, w) in enumerate(zip(TRAINERS, weights, strict=True))}
    fns["assist"] = root_fn
    return initial, run_parties(fns)


@pytest.mark.parametrize("encryption", [{"plain": {}}, OTP, {"otp": {**OTP["otp"], "key_bitlength": 128}}],
                         ids=["plain", "otp64", "otp128"])
def test_three_parties_get_the_weighted_mean(federation, encryption):
    ctxs = federation(TRAINERS)
    initial, res = _run(ctxs, encryption, root_trains=True)
    weights = (10.0, 30.0, 60.0)
    root_outs, root_stats = res["assist"]
    for r in range(2):
        parts = [({k: v + i + 1 + r for k, v in initial.items()}, w) for i, w in enumerate(weights)]
        parts.append(({k: v - r for k, v in initial.items()}, 5.0))
        want = _expected(parts)
        for node in TRAINERS:
            got = res[node][1][r]
            assert set(got) == set(want)
            for k in want:
                assert got[k].dtype == np.float32 and got[k].shape == want[k].shape
                np.testing.assert_allclose(got[k], want[k], atol=1e-6, rtol=0)
                np.testing.assert_array_equal(got[k], root_outs[r][k])  # everyone holds the same bytes
    for node in TRAINERS:  # all started from the root's initial tensors
        for k in initial:
            np.testing.assert_array_equal(res[node][0][k], initial[k])
    stats = res["node-1"][2]
    assert stats["round"] == 1 and stats["bytes_sent"] > 0 and stats["bytes_received"] > 0
    assert root_stats["parties"] == 4 and root_stats["unmask_ms"] >= 0
    if "otp" in encryption:
        assert stats["mask_ms"] > 0


def test_otp_matches_plain_within_1e6_and_uploads_are_masked(federation, redis_session):
    plain = _run(federation(TRAINERS), {"plain": {}}, rounds=1)[1]
    ctxs = federation(TRAINERS)
    seen = {}
    orig_arrivals = ctxs["assist"].comm.arrivals

    def spy(peers, tag, timeout=None, **kw):
        for node, msg in orig_arrivals(peers, tag, timeout, **kw):
            if tag.endswith("/up"):  # a copy: the root sums into the first upload it receives
                seen[node] = {k: v.copy() for k, v in msg.tensors.items()}
            yield node, msg

    ctxs["assist"].comm.arrivals = spy
    otp = _run(ctxs, OTP, rounds=1)[1]
    for node in TRAINERS:
        for k, v in plain[node][1][0].items():
            np.testing.assert_allclose(otp[node][1][0][k], v, atol=1e-6, rtol=0)
    # the aggregator saw only uint64 words, the weight among them, nothing like the fixed-point plaintext
    up = seen["node-1"]
    assert WEIGHT_KEY in up and all(a.dtype == np.uint64 for a in up.values())
    plain_words = np.rint((10.0 * (np.asarray(plain["node-1"][0]["lora_A"]) + 1)) * 2.0**32).astype(np.int64)
    assert np.mean(up["lora_A"].view(np.int64) == plain_words) < 0.01
    assert int(up[WEIGHT_KEY]) != int(10.0 * 2**32)


def test_otp_with_one_trainer_runs_and_warns(federation):
    ctxs = federation(["solo"])
    res = run_parties({
        "solo": lambda: (lambda leaf: (leaf.setup(), leaf.receive_initial(),
                                       leaf.aggregate(0, {"w": np.ones(3, np.float32)}, 2.0))[2])(
            make_leaf(ctxs["solo"], OTP)),
        "assist": lambda: (lambda root: (root.setup(), root.broadcast_initial({"w": np.zeros(3, np.float32)}),
                                         root.aggregate(0, None, 0.0))[2])(make_root(ctxs["assist"], OTP)),
    })
    np.testing.assert_allclose(res["solo"]["w"], 1.0, atol=1e-6)
    for node in ("solo", "assist"):
        assert any(kind == "warning" and "hides nothing" in d["message"] for kind, d in ctxs[node].reports)


def test_mismatched_tensor_layout_is_an_error_naming_the_party(federation):
    ctxs = federation(["a", "b"])

    def leaf(node, shape):
        def fn():
            lf = make_leaf(ctxs[node], {"plain": {}})
            lf.setup()
            lf.receive_initial()
            return lf.aggregate(0, {"w": np.ones(shape, np.float32)}, 1.0)
        return fn

    def root():
        rt = make_root(ctxs["assist"], {"plain": {}})
        rt.broadcast_initial({"w": np.ones(3, np.float32)})
        return rt.aggregate(0, None)

    with pytest.raises(Exception, match="upload from b: tensor 'w' has shape") as info:
        run_parties({"a": leaf("a", 3), "b": leaf("b", 4), "assist": root}, timeout=10)
    assert type(info.value).__name__ == "FrameError"


@pytest.mark.parametrize("encryption", [{"plain": {}}, OTP], ids=["plain", "otp"])
def test_the_first_trainer_s_wrongly_shaped_upload_is_blamed_on_it_not_on_the_next(federation, encryption):
    """Issue 13: uploads were compared with the first one, so node-1's bad upload was blamed on node-2."""
    ctxs = federation(["node-1", "node-2"])

    def leaf(node, shape):
        def fn():
            lf = make_leaf(ctxs[node], encryption)
            lf.setup()
            lf.receive_initial()
            return lf.aggregate(0, {"w": np.ones(shape, np.float32)}, 1.0)
        return fn

    def root():
        rt = make_root(ctxs["assist"], encryption)
        rt.setup()
        rt.broadcast_initial({"w": np.ones(3, np.float32)})
        return rt.aggregate(0, None)

    with pytest.raises(Exception, match="upload from node-1: tensor 'w' has shape") as info:
        run_parties({"node-1": leaf("node-1", 4), "node-2": leaf("node-2", 3), "assist": root}, timeout=30)
    assert type(info.value).__name__ == "FrameError" and info.value.blame == "node-1"


@pytest.mark.parametrize("weight_word,ok", [(2**63, False), (2**62, False), (2**33, True)],
                         ids=["decodes-negative", "decodes-huge", "cancels"])
def test_masked_uploads_that_do_not_cancel_get_a_replay_hint_not_a_weight_0_one(weight_word, ok):
    """Issue 13: a replayed OTP upload failed with '(every party has weight 0?)'. Pads that do not
    cancel leave a random sum, seen here as the total weight's word (64 bits, 32 fraction bits)."""
    from types import SimpleNamespace

    from xfed.aggregation.base import layout_of
    from xfed.aggregation.otp import MaskedUploads, OtpRoot
    from xfed.aggregation.settings import encryption_of
    from xfed.errors import FrameError

    ctx = SimpleNamespace(comm=None, node_id="assist", trainer_ids=["node-1", "node-2"], assist_id="assist")
    root = OtpRoot(ctx, encryption_of(OTP).otp)
    root.layout = layout_of({"w": np.ones(3, np.float32)})
    uploads = MaskedUploads(root, 1)
    for n, w in (("node-1", weight_word), ("node-2", 0)):
        uploads.add(n, {"w": np.zeros(3, np.uint64), WEIGHT_KEY: np.array(w, np.uint64)})
    if ok:
        assert uploads.result()[1] == 2.0
        return
    with pytest.raises(FrameError, match="round 1: the masked uploads do not cancel .* replayed from another "
                                         "round, altered, or masked with other pads; pin every node's identity"):
        uploads.result()


def test_zero_total_weight_and_otp_overflow_are_job_errors(federation):
    ctxs = federation(["a", "b"])
    leaf = make_leaf(ctxs["a"], OTP)
    leaf.streams, leaf._ready = {}, True
    with pytest.raises(JobError, match="key_bitlength 128"):
        leaf.aggregate(0, {"w": np.full(2, 1e12, np.float32)}, 1.0)
    from xfed.aggregation import FedAvg

    with pytest.raises(JobError, match="nothing to average"):
        FedAvg().finalize(0, {"w": np.zeros(1)}, 0.0)


@pytest.mark.parametrize("bits", [64, 128])
def test_plain_equals_otp_bit_for_bit_on_the_same_fixed_point_grid(federation, bits):
    """Training amplifies one-ulp differences round after round, so plain and otp must agree exactly."""
    plain = _run(federation(TRAINERS), {"plain": {"key_bitlength": bits}}, rounds=2, root_trains=True)[1]
    otp = _run(federation(TRAINERS), {"otp": {**OTP["otp"], "key_bitlength": bits}}, rounds=2, root_trains=True)[1]
    for node in TRAINERS:
        for r in range(2):
            for k, v in plain[node][1][r].items():
                np.testing.assert_array_equal(otp[node][1][r][k], v)


def test_plain_key_bitlength_is_checked(federation):
    with pytest.raises(Exception, match="encryption.plain"):
        make_root(federation(TRAINERS)["assist"], {"plain": {"key_bitlength": 32}})


def test_streaming_sum_equals_the_sum_of_the_gathered_uploads_and_holds_one_upload_at_a_time(federation):
    """The root adds each masked upload as it completes (uploads cut in 1 KiB chunks here): its mean is
    bit for bit the unmask_sum of all uploads gathered at once, and while it reads, at most one
    sender's message is more than one chunk in (the others wait in Redis). The mean is written once
    and reaches every party."""
    from xfed.crypto import unmask_sum

    ctxs = federation(TRAINERS)
    for n in TRAINERS:
        ctxs[n].comm.chunk_bytes = 1024
    root_comm = ctxs["assist"].comm
    seen, most_in_progress = {}, []
    orig_arrivals = root_comm.arrivals

    def spy(peers, tag, timeout=None, **kw):
        for node, msg in orig_arrivals(peers, tag, timeout, **kw):
            if tag.endswith("/up"):
                seen[node] = {k: v.copy() for k, v in msg.tensors.items()}
            yield node, msg

    orig_pump = root_comm._pump

    def pump(*args):
        orig_pump(*args)
        most_in_progress.append(sum(len(ib.chunks) > 1 for ib in root_comm._inboxes.values()))

    root_comm.arrivals, root_comm._pump = spy, pump
    initial = {"w": np.random.default_rng(5).normal(size=(40, 30)).astype(np.float32)}

    def leaf(node, weight):
        def fn():
            lf = make_leaf(ctxs[node], OTP)
            lf.setup()
            start = lf.receive_initial()
            return lf.aggregate(0, {"w": start["w"] * weight}, weight)
        return fn

    def root():
        rt = make_root(ctxs["assist"], OTP)
        rt.setup()
        rt.broadcast_initial(initial)
        while sum(root_comm.r.exists(root_comm._mailbox("assist", n)) for n in TRAINERS) < 3:
            time.sleep(0.02)  # every upload waits in Redis: a greedy reader would start all three
        time.sleep(0.2)
        return rt.aggregate(0, None, 0.0), rt.last_round_stats

    out = run_parties({**{n: leaf(n, w) for n, w in zip(TRAINERS, (1.0, 2.0, 3.0), strict=True)}, "assist": root})
    out["assist"], stats = out["assist"]
    sums = unmask_sum([seen[n] for n in TRAINERS], bits=64)
    total = float(sums.pop(WEIGHT_KEY))
    assert total == 6.0
    np.testing.assert_array_equal(out["assist"]["w"], (sums["w"] / total).astype(np.float32))
    for n in TRAINERS:  # the one copy of the mean reached every party
        np.testing.assert_array_equal(out[n]["w"], out["assist"]["w"])
    assert initial["w"].nbytes < stats["bytes_sent"] < 2 * initial["w"].nbytes  # one payload + 3 headers
    assert len(seen) == 3 and max(most_in_progress) <= 1  # a greedy reader has all 3 half read


def test_sparse_pairing_gives_the_same_mean_with_fewer_pad_streams(federation):
    """encryption.otp.neighbours 2 with five label trainers: each masks with two pad peers, not four,
    and the uploads still cancel to the weighted mean."""
    trainers = [f"node-{i}" for i in range(1, 6)]
    ctxs = federation(trainers)
    enc = {"otp": {**OTP["otp"], "neighbours": 2}}
    initial = {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}

    def leaf(node, weight):
        def fn():
            lf = make_leaf(ctxs[node], enc)
            lf.setup()
            start = lf.receive_initial()
            return lf.aggregate(0, {"w": start["w"] * weight}, weight), len(lf.streams)
        return fn

    def root():
        rt = make_root(ctxs["assist"], enc)
        rt.setup()
        rt.broadcast_initial(initial)
        return rt.aggregate(0, None, 0.0)

    weights = dict(zip(trainers, (1.0, 2.0, 3.0, 4.0, 5.0), strict=True))
    out = run_parties({**{n: leaf(n, w) for n, w in weights.items()}, "assist": root})
    want = sum(w * w * initial["w"].astype(np.float64) for w in weights.values()) / sum(weights.values())
    np.testing.assert_allclose(out["assist"]["w"], want, rtol=1e-6)
    assert all(out[n][1] == 2 for n in trainers)
