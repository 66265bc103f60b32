"""The root's resolution of one-sided pairings (SECAGG.md §6): the late party is left out, not the others."""
from __future__ import annotations

from xfed.aggregation.secagg_sum import survivors

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
