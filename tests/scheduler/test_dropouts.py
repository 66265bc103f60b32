"""Pure scheduler decisions for stages that tolerate dropouts: tolerate, fail naming who dropped, round records."""
from __future__ import annotations

import json

from xfed.broker.jobrecord import Job, JobState, NodeStatus
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


# -- rejoins (xfed.scheduler.rejoins) ------------------------------------------------------------------
def test_a_dropped_trainer_alive_again_is_re_dispatched_as_the_next_incarnation_and_admitted_once():
    from xfed.scheduler.rejoins import (
        incarnation_of,
        not_yet_admitted,
        rejoin_candidates,
        stale_incarnation,
        with_admission,
        with_rejoin,
    )

    j = announced(job(n4=NodeStatus(state="dropped", stage=0), n3=NodeStatus(state="running", stage=0)))
    assert rejoin_candidates(j, policy_of(j), {"n3", "n4"}) == []  # an operator without rejoin support
    j = announced(j, rejoin=True)
    assert rejoin_candidates(j, policy_of(j), {"n1", "n2", "n3"}) == []  # still dead
    assert rejoin_candidates(j, None, {"n4"}) == []                      # a stage without dropout tolerance
    assert rejoin_candidates(j, policy_of(j), {"n3", "n4", "assist"}) == ["n4"]
    record, k = with_rejoin(j, "n4")
    assert k == 1
    j.extra["rejoin:0.1"] = record  # the job's stage 0, attempt 1
    assert incarnation_of(j, "n4") == 1 and not_yet_admitted(j) == {"n4"}
    assert stale_incarnation(j, {"node": "n4"}) and not stale_incarnation(j, {"node": "n4", "incarnation": 1})
    # the root's report admits the current incarnation only, once
    assert with_admission(j, {"secagg": {"joined": {"n4": 2}, "from_round": 3}}) is None
    record, admitted, first = with_admission(j, {"secagg": {"joined": {"n4": 1}, "from_round": 3}})
    j.extra["rejoin:0.1"] = record
    assert admitted == {"n4": 1} and first == 3 and not_yet_admitted(j) == set()
    assert with_admission(j, {"secagg": {"joined": {"n4": 1}, "from_round": 3}}) is None
    assert with_rejoin(j, "n4")[1] == 2  # dropped again later: the next incarnation
    j.extra["rejoin:0.1"] = "not json"
    assert incarnation_of(j, "n4") == 0 and not_yet_admitted(j) == set()


def test_a_rejoiner_not_yet_admitted_is_not_waited_for_once_admitted_it_is():
    nodes = {n: NodeStatus(state="done", stage=0, n_stages=1) for n in ["assist", "n1", "n2", "n3"]}
    nodes["n4"] = NodeStatus(state="running", stage=0)
    assert decide_after_stage(0, P, nodes).action == "wait"
    assert decide_after_stage(0, P, nodes, optional={"n4"}).action == "success"


def test_a_lost_stage_process_counts_as_a_dropout_with_its_own_reason():
    j = announced(job())
    v = judge_dead(j, policy_of(j), ["n2"], 0.5, why="its daemon restarted and lost the stage process")
    assert v.action == "tolerate" and "daemon restarted" in v.reason and "heartbeat" not in v.reason
