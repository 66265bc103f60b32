"""Dropout-tolerant secure aggregation with four label trainers (threshold 3) as threads on real Redis."""

from __future__ import annotations

import gc
import time
import tracemalloc

import numpy as np
import pytest

from xfed.aggregation import SecAggLeaf, SecAggRoot, make_leaf, make_root
from xfed.aggregation.base import WEIGHT_KEY, encode, layout_of, tag_down, tag_up
from xfed.aggregation.secagg import tag_ask, tag_keys, tag_reveal
from xfed.aggregation.secagg_sum import SecAggUploads
from xfed.crypto import unmask_sum
from xfed.errors import ConfigError, SecurityError

from .conftest import run_parties

pytestmark = pytest.mark.integration

TRAINERS = ["node-1", "node-2", "node-3", "node-4"]
WEIGHTS = {"node-1": 1.0, "node-2": 2.0, "node-3": 3.0, "node-4": 4.0}
STEP = 4 * 2.0 ** -32  # n parties x one fixed-point step (64 bits, 32 fractional bits), relative to the weights


def enc(threshold=3, timeout=1.5, **extra):
    return {"otp": {"key_bitlength": 64, "key_exchange": {"key_bitlength": 2048},
                    "dropout": {"threshold": threshold, "round_timeout_s": timeout, **extra}}}


def update(node: str, r: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([int(node[-1]), r])
    return {"a": rng.normal(size=(3, 5)).astype(np.float32), "b": rng.normal(size=7).astype(np.float32)}


def mean_of(nodes, r):
    total = sum(WEIGHTS[n] for n in nodes)
    return {k: sum(WEIGHTS[n] * update(n, r)[k].astype(np.float64) for n in nodes) / total for k in ("a", "b")}


def leaf_fn(ctx, encryption, rounds, stop_after=None, before_round=None):
    def fn():
        leaf = make_leaf(ctx, encryption)
        assert isinstance(leaf, SecAggLeaf)
        leaf.setup()
        leaf.receive_initial()
        outs = []
        for r in range(rounds):
            if stop_after is not None and r == stop_after:
                return outs, leaf
            if before_round:
                before_round(leaf, r)
            outs.append((leaf.aggregate(r, update(ctx.node_id, r), WEIGHTS[ctx.node_id]), leaf.last_contributors))
        return outs, leaf
    return fn


def capture_sums(root):
    """{round: (sums, total, removed)}: what the root hands the strategy each round (a copy)."""
    seen = {}
    finish = root._finish

    def spy(round_idx, sums, total, own, own_w, meta=None):
        seen[round_idx] = ({k: v.copy() for k, v in sums.items()}, total, list(root.last_removed))
        return finish(round_idx, sums, total, own, own_w, meta)

    root._finish = spy
    root.seen = seen
    return seen


def assert_exact(root, r, nodes):
    """The root's round-r sum is bit for bit the sum of `nodes`' unmasked encodings: what the old
    path (every survivor's upload held, then unmask_sum with the correction) gave, since pads and
    self-masks cancel exactly mod 2^bits."""
    s = root.settings
    want = unmask_sum([encode(update(n, r), WEIGHTS[n], n, bits=s.bits, frac_bits=s.frac_bits,
                              n_parties=len(root.trainers), self_id=n, peer_streams={}) for n in nodes],
                      bits=s.bits, frac_bits=s.frac_bits)
    sums, total, _ = root.seen[r]
    assert total == float(want.pop(WEIGHT_KEY))
    assert sorted(sums) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(sums[k], want[k])


def root_fn(ctx, encryption, rounds):
    def fn():
        root = make_root(ctx, encryption)
        assert isinstance(root, SecAggRoot)
        capture_sums(root)
        root.setup()
        root.broadcast_initial({"a": np.zeros((3, 5), np.float32), "b": np.zeros(7, np.float32)})
        outs = []
        for r in range(rounds):
            outs.append((root.aggregate(r, None, 0.0), root.last_contributors, root.last_dropped))
        return outs, root
    return fn


def check_mean(got, nodes, r):
    want = mean_of(nodes, r)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=1e-6, rtol=0)


def test_all_four_summed_with_precomputed_pads_even_when_a_survivor_dies_before_sending_its_shares(federation):
    """Round 0: everyone. Round 1: node-3 uploads, then dies before answering the root; t = 3 answers
    still unmask every upload, so the mean is over all four."""
    ctxs = federation(TRAINERS)
    e = enc(timeout=3.0, precompute_pads=True)

    def node3():
        leaf = make_leaf(ctxs["node-3"], e)
        leaf.setup()
        leaf.receive_initial()
        first = leaf.aggregate(0, update("node-3", 0), WEIGHTS["node-3"])

        def die(*_a):
            raise SystemExit
        leaf._answer = die
        try:
            leaf.aggregate(1, update("node-3", 1), WEIGHTS["node-3"])
        except SystemExit:
            return first

    fns = {n: leaf_fn(ctxs[n], e, 2) for n in ("node-1", "node-2", "node-4")}
    fns["node-3"] = node3
    fns["assist"] = root_fn(ctxs["assist"], e, 2)
    res = run_parties(fns)
    for r in range(2):
        mean, contributors, dropped = res["assist"][0][r]
        assert contributors == TRAINERS and dropped == []
        check_mean(mean, TRAINERS, r)
        assert_exact(res["assist"][1], r, TRAINERS)
        for n in ("node-1", "node-2", "node-4"):
            np.testing.assert_array_equal(res[n][0][r][0]["a"], mean["a"])
            assert res[n][0][r][1] == TRAINERS
    np.testing.assert_array_equal(res["node-3"]["a"], res["assist"][0][0][0]["a"])
    # what the root reported for the scheduler: the policy, then who contributed per round
    secagg = [d["secagg"] for kind, d in ctxs["assist"].reports if kind == "metrics"]
    assert secagg[0]["threshold"] == 3 and secagg[0]["trainers"] == TRAINERS
    assert secagg[1] == {"round": 0, "contributors": TRAINERS, "dropped": []}


def test_a_party_dead_after_sending_its_round_keys_is_unmasked_out(federation):
    """node-4 sends round 1's keys (its pads are in the others' uploads) and dies before uploading."""
    ctxs = federation(TRAINERS)
    e = enc(timeout=3.0)  # a loaded machine may space the survivors' uploads by more than a second

    def die_mid_round(leaf, r):
        if r == 1:
            leaf.prepare(1)
            raise SystemExit  # caught below: the thread ends as a killed process would

    def node4():
        try:
            return leaf_fn(ctxs["node-4"], e, 2, before_round=die_mid_round)()
        except SystemExit:
            return "dead"

    fns = {n: leaf_fn(ctxs[n], e, 2) for n in TRAINERS[:3]}
    fns["node-4"] = node4
    fns["assist"] = root_fn(ctxs["assist"], e, 2)
    res = run_parties(fns)
    outs, root = res["assist"]
    check_mean(outs[0][0], TRAINERS, 0)
    assert_exact(root, 0, TRAINERS)
    for r in (1,):
        mean, contributors, dropped = outs[r]
        assert contributors == TRAINERS[:3] and dropped == ["node-4"]
        check_mean(mean, TRAINERS[:3], r)
        assert_exact(root, r, TRAINERS[:3])
        assert res["node-1"][0][r][1] == TRAINERS[:3]
    # every survivor revealed key shares of node-4 in round 1 and never a seed share of it
    for n in TRAINERS[:3]:
        ledger = res[n][1].ledger
        assert "node-4" in ledger.keys[1] and "node-4" not in ledger.seeds[1]
    assert res["node-4"] == "dead"


def test_a_late_upload_is_discarded_and_the_straggler_takes_part_next_round(federation):
    ctxs = federation(TRAINERS)
    e = enc(timeout=3.0)
    late_leaf = {}

    def straggle(leaf, r):
        late_leaf["leaf"] = leaf
        if r == 1:  # keys sent, upload only once the root has summed round 1 without node-4
            leaf.prepare(1)
            deadline = time.monotonic() + 60
            while not any(d.get("secagg", {}).get("round") == 1 for _, d in ctxs["assist"].reports):
                assert time.monotonic() < deadline
                time.sleep(0.02)

    fns = {n: leaf_fn(ctxs[n], e, 4) for n in TRAINERS[:3]}
    fns["node-4"] = leaf_fn(ctxs["node-4"], e, 4, before_round=straggle)
    fns["assist"] = root_fn(ctxs["assist"], e, 4)
    res = run_parties(fns)
    outs, root = res["assist"]
    assert outs[1][1] == TRAINERS[:3] and outs[1][2] == ["node-4"]
    check_mean(outs[1][0], TRAINERS[:3], 1)
    for r in (2, 3):
        check_mean(outs[r][0], outs[r][1], r)
    for r in range(4):
        assert_exact(root, r, outs[r][1])
    # back (a late party's keys and upload are waited for a grace after the others')
    assert outs[2][1] == TRAINERS or outs[3][1] == TRAINERS
    assert res["node-4"][0][1][1] == TRAINERS[:3]  # it was told it did not contribute
    # the late upload was read with a later round's uploads and dropped unread (not kept in memory for
    # the rest of the stage); no survivor ever revealed a seed share of node-4 in round 1
    assert root.discarded >= 1
    assert not any(q for ib in root.comm._inboxes.values() for t, q in ib.pending.items() if t.startswith("agg/"))
    survivors_ledgers = [res[n][1].ledger for n in TRAINERS[:3]]
    for ledger in survivors_ledgers:
        assert "node-4" in ledger.keys[1] and "node-4" not in ledger.seeds[1]


def test_an_upload_summed_then_left_out_for_a_one_sided_pairing_is_subtracted_again(federation):
    """Round 1: node-4's keys reach node-1 only after node-1 stopped waiting, so node-4 pairs with
    node-1 but not the other way: the root, which summed all four uploads as they came, leaves out
    node-4 and takes its upload out again; the sum is exactly the other three's."""
    ctxs = federation(TRAINERS)
    e = enc(timeout=3.0)

    def hold_back_node4(leaf, r):
        if r != 1:
            return
        gather = leaf.comm.gather_until

        def late_node4(peers, tag, timeout):  # node-4's keys "arrive" after the wait (read only when asked)
            if tag == tag_keys(1) and timeout > 0:
                peers = [p for p in peers if p != "node-4"]
            return gather(peers, tag, timeout)
        leaf.comm.gather_until = late_node4

    fns = {n: leaf_fn(ctxs[n], e, 3) for n in TRAINERS}
    fns["node-1"] = leaf_fn(ctxs["node-1"], e, 3, before_round=hold_back_node4)
    fns["assist"] = root_fn(ctxs["assist"], e, 3)
    res = run_parties(fns)
    outs, root = res["assist"]
    assert outs[1][1] == TRAINERS[:3] and outs[1][2] == ["node-4"]
    assert root.seen[1][2] == ["node-4"]  # summed as it came, then taken out
    assert root.seen[0][2] == []
    for r in range(3):
        check_mean(outs[r][0], outs[r][1], r)
        assert_exact(root, r, outs[r][1])
        for n in TRAINERS:  # node-4 read round 1's mean from its own copy, the others the published one
            np.testing.assert_array_equal(res[n][0][r][0]["a"], outs[r][0]["a"])
    assert res["node-4"][0][1][1] == TRAINERS[:3]
    for n in TRAINERS[:3]:  # node-4 was treated as dropped: key shares revealed, never its seed
        ledger = res[n][1].ledger
        assert "node-4" in ledger.keys[1] and "node-4" not in ledger.seeds[1]


def test_the_mean_is_published_once_for_the_contributors_and_sent_to_each_other_member(federation):
    """Contributors read one published copy, every other member its own; a contributor that has not
    uploaded since keeps the published copy readable (copies go to everyone meanwhile) until it uploads
    again or restarts."""
    ctxs = federation(TRAINERS)
    root = make_root(ctxs["assist"], enc())
    size = 1 << 20  # 1 MB of float32

    def send(r, uploaded, contributors):
        root._uploaded = set(uploaded)
        before = root.comm.stats.bytes_sent
        root._send_mean(r, {"a": np.full(size // 4, r, dtype=np.float32)},
                        {"contributors": contributors, "dropped": [n for n in TRAINERS if n not in contributors]})
        return (root.comm.stats.bytes_sent - before) / size  # copies written

    def read(nodes, r):
        for n in nodes:  # the same mean and meta for every reader (with identities, each its own signature)
            msg = ctxs[n].comm.recv("assist", tag_down(r), timeout=5)
            assert msg.tensors["a"][0] == r and len(msg.tensors["a"]) == size // 4
            assert "contributors" in msg.meta

    assert round(send(5, TRAINERS, TRAINERS[:3])) == 2  # one published copy + node-4's own
    read(["node-1", "node-2", "node-4"], 5)
    stalled = ["node-1", "node-2", "node-4"]  # node-3 has not read round 5's mean, nor uploaded since
    assert round(send(6, stalled, stalled)) == 4  # so round 5's copy stays: a copy each this round
    read(["node-3"], 5)
    read(TRAINERS, 6)
    assert round(send(7, stalled, stalled)) == 4  # still no upload from node-3: the copy stays readable
    read(TRAINERS, 7)
    assert round(send(8, TRAINERS, TRAINERS)) == 1  # node-3 uploaded again (it read round 5's): published
    read(TRAINERS, 8)
    assert round(send(9, stalled, stalled)) == 4
    read(TRAINERS, 9)
    ctxs["assist"].membership = lambda: {"node-3": 1}  # node-3 restarted: its old incarnation reads nothing
    root._admit(9, stalled)
    assert round(send(10, stalled, stalled)) == 2  # published for the three, a copy for node-3


def _gather_peak(federation, n: int, words: int) -> tuple[int, int]:
    """tracemalloc peak of the root reading n uploads of `words` uint64 words from real Redis (sent
    before, in 128 KiB entries) into its running sum; and the number of uploads summed."""
    nodes = [f"node-{i}" for i in range(1, n + 1)]
    ctxs = federation(nodes)
    root = make_root(ctxs["assist"], enc(threshold=n // 2 + 1))
    root.layout = layout_of({"a": np.zeros(words, np.float32)})
    rng = np.random.default_rng(n)
    for node in nodes:
        ctxs[node].comm.chunk_bytes = 1 << 17
        ctxs[node].comm.send("assist", tag_up(0), {"a": rng.integers(0, 2**64, words, dtype=np.uint64),
                                                   WEIGHT_KEY: np.uint64(1)},
                             meta={"paired": [m for m in nodes if m != node]})
    gc.collect()
    tracemalloc.start()
    try:
        with SecAggUploads(root, 0) as uploads:
            root._gather_uploads(0, uploads)
            summed = len(uploads.summed())
        return tracemalloc.get_traced_memory()[1], summed
    finally:
        tracemalloc.stop()


def test_the_root_reads_and_sums_one_upload_at_a_time_whatever_the_number_of_parties(federation):
    words = 1 << 19  # 4 MB uploads
    peak2, summed2 = _gather_peak(federation, 2, words)
    peak8, summed8 = _gather_peak(federation, 8, words)
    assert (summed2, summed8) == (2, 8)
    # the sum + the upload being read (its entries and their join) + one 128 KiB entry per other
    # mailbox; holding every upload (the old gather) would be 8 uploads at N = 8
    assert peak8 < 4 * words * 8, (peak2, peak8)
    assert peak8 - peak2 < 0.5 * words * 8, (peak2, peak8)


def test_the_root_sums_uploads_before_the_last_one_is_sent(federation):
    ctxs = federation(TRAINERS[:3])
    root = make_root(ctxs["assist"], enc(threshold=2, timeout=20))
    root.layout = layout_of({"a": np.zeros(8, np.float32)})

    def upload(node):
        ctxs[node].comm.send("assist", tag_up(0), {"a": np.full(8, 7, np.uint64), WEIGHT_KEY: np.uint64(1)},
                             meta={"paired": [m for m in TRAINERS[:3] if m != node]})

    upload("node-1")
    upload("node-2")
    with SecAggUploads(root, 0) as uploads:
        def gather():
            root._gather_uploads(0, uploads)
            return uploads.summed()

        def last():
            deadline = time.monotonic() + 20
            while uploads.sum.count < 2:  # both are in the running sum while node-3 has sent nothing
                assert time.monotonic() < deadline
                time.sleep(0.01)
            summed = uploads.summed()
            upload("node-3")
            return summed

        res = run_parties({"assist": gather, "node-3": last})
    assert res["node-3"] == TRAINERS[:2] and res["assist"] == TRAINERS[:3]
    assert uploads.sum.raw()["a"][0] == 21


def test_a_root_asking_for_both_shares_of_one_party_is_refused_and_named(federation):
    """A root that says node-4 dropped and also survived: every honest trainer refuses, naming it."""
    ctxs = federation(TRAINERS)
    e = enc()

    def evil_root():
        root = make_root(ctxs["assist"], e)
        root.setup()
        root.broadcast_initial({"a": np.zeros((3, 5), np.float32), "b": np.zeros(7, np.float32)})
        got = root.comm.gather(TRAINERS, tag_up(0))
        assert set(got) == set(TRAINERS)
        root.comm.broadcast(TRAINERS[:3], tag_ask(0), meta={"survivors": TRAINERS, "dropped": ["node-4"]})
        return "asked"

    fns = {n: leaf_fn(ctxs[n], e, 1) for n in TRAINERS[:3]}
    fns["assist"] = evil_root
    fns["node-4"] = leaf_fn(ctxs["node-4"], e, 1)
    with pytest.raises(SecurityError, match=r"assist asked for both the self-mask share and the key share of node-4"):
        run_parties(fns, timeout=30)
    assert not ctxs["assist"].comm._inbox("node-1").pending[tag_reveal(0)]


def test_threshold_at_most_half_and_bad_settings_are_refused(federation):
    ctxs = federation(TRAINERS)
    with pytest.raises(ConfigError, match=r"threshold: 2 is at most half .* t >= 3"):
        make_root(ctxs["assist"], enc(threshold=2))
    with pytest.raises(ConfigError, match="threshold: 5 exceeds"):
        make_leaf(ctxs["node-1"], enc(threshold=5))
    with pytest.raises(ConfigError, match="round_timeout_s"):
        make_leaf(ctxs["node-1"], enc(timeout=0))
    with pytest.raises(ConfigError, match="dropout.surprise"):
        make_leaf(ctxs["node-1"], enc(surprise=1))
    with pytest.raises(ConfigError, match="min_parties"):
        make_root(ctxs["assist"], enc(), min_parties=2)

