"""Pure scheduler decisions for stages that tolerate dropouts: tolerate, fail naming who dropped, round records."""
from __future__ import annotations

import json

from xfed.broker.jobstore import Job, JobState, NodeStatus
from xfed.scheduler.dropouts import judge_dead, policy_from_event, policy_of, round_record
from xfed.scheduler.progress import decide_after_stage

T = ["n1", "n2", "n3", "n4"]
P = ["assist", *T]


def job(**nodes) -> Job:
    return Job("5", JobState.RUNNING, stage=0, attempt=1, participants=P, nodes=dict(nodes))


def announced(j: Job, threshold=3, **extra) -> Job:
    policy = policy_from_event(j, {"secagg": {"threshold": threshold, "min_parties": threshold, "trainers": T,
                                              **extra}})
    j.extra["dropout"] = policy.to_json()
    return j


def test_without_a_policy_a_dead_node_fails_the_job_as_before():
    v = judge_dead(job(), None, ["n2", "n3"], 0.5)
    assert v.action == "fail" and v.node == "n2" and "heartbeat expired" in v.reason and "also silent: n3" in v.reason


def test_one_dead_trainer_is_tolerated_while_threshold_remain_then_fail_names_all_dropped():
    j = announced(job())
    v = judge_dead(j, policy_of(j), ["n4"], 0.5)
    assert v.action == "tolerate" and v.dropped == ("n4",) and "3 of 4" in v.reason
    j.nodes["n4"] = NodeStatus(state="dropped", stage=0)
    assert judge_dead(j, policy_of(j), ["n4"], 0.5) is None  # nothing new
    v = judge_dead(j, policy_of(j), ["n3", "n4"], 0.5)
    assert v.action == "fail" and "n3, n4" in v.reason and "2 of 4 remain" in v.reason and v.node == "n3"


def test_the_assist_trainer_dying_is_never_tolerated():
    j = announced(job())
    v = judge_dead(j, policy_of(j), ["assist"], 0.5)
    assert v.action == "fail" and v.node == "assist"


def test_a_policy_binds_its_stage_and_attempt_and_bad_announcements_are_ignored():
    j = announced(job())
    j.stage = 1
    assert policy_of(j) is None
    assert policy_from_event(job(), {"secagg": {"threshold": 3, "trainers": ["x"]}}) is None
    assert policy_from_event(job(), {"secagg": {"threshold": 0, "trainers": T}}) is None
    assert policy_from_event(job(), {"round": 1}) is None


def test_dropped_nodes_are_not_waited_for():
    nodes = {n: NodeStatus(state="done", stage=0, n_stages=1) for n in ["assist", "n1", "n2", "n3"]}
    nodes["n4"] = NodeStatus(state="dropped", stage=0)
    assert decide_after_stage(0, P, nodes).action == "success"


def test_round_records_accumulate_who_contributed():
    j = job()
    j.extra["secagg_rounds"] = round_record(j, {"secagg": {"round": 0, "contributors": T, "dropped": []}})
    rec = json.loads(round_record(j, {"secagg": {"round": 1, "contributors": T[:3], "dropped": ["n4"]}}))
    assert [r["round"] for r in rec] == [0, 1] and rec[1]["dropped"] == ["n4"] and rec[1]["attempt"] == 1
