"""Pure scheduler decisions: when a stage is complete, what follows, who is missing."""
from __future__ import annotations

from xfed.broker.jobrecord import NodeStatus
from xfed.scheduler.progress import decide_after_stage, missing_nodes

P = ["a", "b", "c"]


def done(stage, n):
    return NodeStatus(state="done", stage=stage, n_stages=n)


def test_waits_until_every_participant_is_done_with_this_stage():
    nodes = {"a": done(0, 2), "b": done(0, 2), "c": NodeStatus(state="running", stage=0)}
    assert decide_after_stage(0, P, nodes).action == "wait"
    nodes["c"] = done(-1, 2)  # a done from another stage does not count
    assert decide_after_stage(0, P, nodes).action == "wait"


def test_next_stage_then_success():
    nodes = {n: done(0, 2) for n in P}
    d = decide_after_stage(0, P, nodes)
    assert (d.action, d.stage) == ("next", 1)
    assert decide_after_stage(1, P, {n: done(1, 2) for n in P}).action == "success"


def test_disagreeing_stage_counts_fail_naming_the_odd_node():
    nodes = {"a": done(0, 2), "b": done(0, 1), "c": done(0, 2)}
    d = decide_after_stage(0, P, nodes)
    assert d.action == "fail" and d.node == "b" and "a has 2, b has 1, c has 2" in d.reason


def test_missing_nodes_keep_config_order():
    assert missing_nodes(["x", "a", "m"], {"a"}) == ["x", "m"]
