"""The SecAgg root's running sum (secagg_sum): one-sided pairings, taking a summed upload out again, and
memory that does not grow with the number of parties."""
from __future__ import annotations

import gc
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest

from xfed.aggregation.base import WEIGHT_KEY, encode, layout_of
from xfed.aggregation.secagg_sum import SecAggUploads, survivors
from xfed.crypto import encoded_shape, unmask_sum
from xfed.crypto.fixedpoint import add_into, default_frac_bits, sub_into
from xfed.errors import FrameError

NODES = ["node-1", "node-2", "node-3", "node-4"]


def _survivors(paired: dict[str, list[str]]) -> list[str]:
    return survivors({n: set(p) for n, p in paired.items()})


def test_a_rejoiner_whose_keys_reached_no_member_is_left_out_alone():
    members = NODES[:3]
    paired = {n: [m for m in members if m != n] for n in members}
    paired["node-4"] = list(members)  # it holds everyone's keys; nobody holds its keys
    assert _survivors(paired) == members


def test_a_single_one_sided_pair_leaves_out_the_late_party():
    paired = {n: [m for m in NODES if m != n] for n in NODES}
    paired["node-1"].remove("node-3")  # node-3's keys came late to node-1; node-3 holds node-1's
    assert _survivors(paired) == ["node-1", "node-2", "node-4"]


def test_symmetric_pairings_keep_everyone_even_when_partial():
    paired = {"node-1": ["node-2"], "node-2": ["node-1"], "node-3": [], "node-4": []}
    assert _survivors(paired) == NODES


def _root(nodes: list[str], bits: int, shapes: dict[str, tuple]) -> SimpleNamespace:
    """What SecAggUploads reads of the root: settings, the broadcast layout, the trainers."""
    return SimpleNamespace(settings=SimpleNamespace(bits=bits, frac_bits=default_frac_bits(bits)), trainers=nodes,
                           layout=layout_of({k: np.zeros(s, np.float32) for k, s in shapes.items()}))


def _upload(bits: int, shapes: dict[str, tuple], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {k: rng.integers(0, 2**64, size=encoded_shape(s, bits), dtype=np.uint64) for k, s in shapes.items()}
    out[WEIGHT_KEY] = rng.integers(0, 2**64, size=encoded_shape((), bits), dtype=np.uint64)
    return out


def _meta(node: str, nodes: list[str]) -> dict:
    return {"paired": [n for n in nodes if n != node], "public": "5", "commit": "c"}


@pytest.mark.parametrize("bits", [64, 128])
def test_an_upload_taken_out_after_summing_leaves_the_survivors_sum_bit_for_bit(bits):
    """Uploads = encodings + masks; two are taken out after all four were summed; the correction
    removes the survivors' masks: the decoded sum is the survivors' encodings' sum, bit for bit."""
    shapes = {"a": (6, 5), "b": (7,)}
    frac = default_frac_bits(bits)
    rng = np.random.default_rng(7)
    plain = {n: encode({k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}, 1.0 + i, n, bits=bits,
                       frac_bits=frac, n_parties=4, self_id=n, peer_streams={}) for i, n in enumerate(NODES)}
    masks = {n: _upload(bits, shapes, i) for i, n in enumerate(NODES)}
    ups = {}
    for n in NODES:
        ups[n] = {k: v.copy() for k, v in plain[n].items()}
        for k in ups[n]:
            add_into(ups[n][k], masks[n][k], bits)
    with SecAggUploads(_root(NODES, bits, shapes), 3) as uploads:
        for n in ["node-3", "node-1", "node-4", "node-2"]:  # arrival order
            uploads.add(n, {k: v.copy() for k, v in ups[n].items()}, _meta(n, NODES))
        assert uploads.spilled_bytes == 4 * sum(v.nbytes for v in ups["node-1"].values())
        uploads.remove("node-3")  # the first one summed: its arrays became the sum, the spill has its words
        uploads.remove("node-2")
        assert uploads.summed() == ["node-1", "node-4"] and uploads.removed == ["node-3", "node-2"]
        assert uploads.paired["node-4"] == {"node-1", "node-2", "node-3"}
        correction = {k: np.zeros_like(v) for k, v in masks["node-1"].items()}
        for n in ("node-1", "node-4"):
            for k in correction:
                sub_into(correction[k], masks[n][k], bits)
        sums, total = uploads.result_with(correction)
    want = unmask_sum([plain["node-1"], plain["node-4"]], bits=bits, frac_bits=frac)
    assert total == float(want.pop(WEIGHT_KEY)) == 1.0 + 4.0
    assert sorted(sums) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(sums[k], want[k])
    with pytest.raises(ValueError):  # the spill file is gone with the round
        uploads._spill.seek(0)


def test_a_correction_that_leaves_masks_in_the_sum_is_refused():
    shapes = {"a": (8,)}
    with SecAggUploads(_root(NODES, 64, shapes), 2) as uploads:
        for i, n in enumerate(NODES):
            uploads.add(n, _upload(64, shapes, i), _meta(n, NODES))
        # masks left in: the weight decodes to a random value; here one that is negative
        top = np.uint64(1 << 63) - uploads.sum.raw()[WEIGHT_KEY]
        with pytest.raises(FrameError, match="do not cancel"):
            uploads.result_with({"a": np.zeros(8, np.uint64), WEIGHT_KEY: np.asarray(top, dtype=np.uint64)})


def test_malformed_pairing_a_second_upload_and_a_wrong_layout_are_refused_naming_the_party():
    shapes = {"a": (4,)}
    with SecAggUploads(_root(NODES, 64, shapes), 0) as uploads:
        with pytest.raises(FrameError, match="upload from node-2: malformed pairing list") as err:
            uploads.add("node-2", _upload(64, shapes, 0), {"paired": ["node-2"]})
        assert err.value.blame == "node-2"
        with pytest.raises(FrameError, match="malformed pairing list"):
            uploads.add("node-2", _upload(64, shapes, 0), {"paired": "node-1"})
        with pytest.raises(FrameError, match=r"masked upload from node-3: tensor 'a' has shape \(5,\)"):
            uploads.add("node-3", _upload(64, {"a": (5,)}, 0), _meta("node-3", NODES))
        uploads.add("node-1", _upload(64, shapes, 1), _meta("node-1", NODES))
        with pytest.raises(FrameError, match="a second upload from node-1"):
            uploads.add("node-1", _upload(64, shapes, 1), _meta("node-1", NODES))
        assert uploads.summed() == ["node-1"] and uploads.sum.count == 1


def _peak_of_a_round(n: int, words: int) -> tuple[int, int]:
    """tracemalloc peak of summing n uploads of `words` uint64 that arrive one at a time, then
    taking one out; and the bytes of one upload."""
    nodes = [f"node-{i}" for i in range(n)]
    shapes = {"a": (words,)}
    gc.collect()
    tracemalloc.start()
    try:
        with SecAggUploads(_root(nodes, 64, shapes), 0) as uploads:
            for i, node in enumerate(nodes):
                up = _upload(64, shapes, i)  # what the Comm hands over: one upload at a time
                uploads.add(node, up, _meta(node, nodes))
                del up
            uploads.remove(nodes[-1])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, words * 8


def test_the_sum_holds_about_two_uploads_whatever_the_number_of_parties():
    peak2, size = _peak_of_a_round(2, 1 << 19)  # 4 MB uploads
    peak8, _ = _peak_of_a_round(8, 1 << 19)
    # the sum + the upload in hand (+ the one read back); gathering all 8 would be 8 uploads
    assert peak8 < 3.2 * size, (peak2, peak8)
    assert peak8 - peak2 < 0.25 * size, (peak2, peak8)
