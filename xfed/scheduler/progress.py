"""Pure decisions of the scheduler: is a stage complete, what comes next, who is missing."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from xfed.broker.jobrecord import NodeStatus
from xfed.broker.messages import NodeState, StageAction


@dataclass(frozen=True)
class StageDecision:
    """`stage` is the next stage (NEXT); `reason`/`node` say why (FAIL)."""

    action: StageAction
    stage: int = -1
    reason: str = ""
    node: str = ""


def decide_after_stage(stage: int, participants: list[str], nodes: dict[str, NodeStatus],
                       optional: set[str] | frozenset[str] = frozenset()) -> StageDecision:
    """What to do once node statuses change during `stage`.

    Every participant reports `done` with the length of its own stage list; they must agree
    (XFL runs stage k on every node), and the job moves on only when all are done. `optional`
    nodes (restarted, not yet admitted back: scheduler.rejoins) are not waited for.
    """
    # a node dropped from a stage that tolerates dropouts (scheduler.dropouts) is not waited for
    present = [n for n in participants if nodes.get(n, NodeStatus()).state is not NodeState.DROPPED
               and not (n in optional and nodes.get(n, NodeStatus()).state is not NodeState.DONE)]
    waiting = [n for n in present if nodes.get(n, NodeStatus()).state is not NodeState.DONE
               or nodes.get(n, NodeStatus()).stage != stage]
    if waiting or not present:
        return StageDecision(StageAction.WAIT)
    counts = {n: nodes[n].n_stages for n in present}
    distinct = {c for c in counts.values()}
    if len(distinct) != 1 or None in distinct:
        detail = ", ".join(f"{n} has {c}" for n, c in sorted(counts.items()))
        odd = _odd_one_out(counts)
        return StageDecision(StageAction.FAIL, reason=f"nodes disagree on the number of stages in their "
                                            f"trainer_config: {detail}", node=odd)
    digests = {n: (nodes[n].result or {}).get("final_digest") for n in present}
    if any(digests.values()) and len({d for d in digests.values()}) != 1:
        detail = ", ".join(f"{n} {str(d)[:12] if d else 'none'}" for n, d in sorted(digests.items()))
        return StageDecision(StageAction.FAIL, reason=f"nodes finished stage {stage} with different final aggregates "
                                            f"({detail}): a forged or replayed done event? pin identities "
                                            f"in fed_conf.json so events are signed", node=_odd_one_out(digests))
    n_stages = distinct.pop()
    if stage + 1 < n_stages:
        return StageDecision(StageAction.NEXT, stage=stage + 1)
    return StageDecision(StageAction.SUCCESS)


def plan_field(stage: int, attempt: int) -> str:
    """Job hash field holding the round count a stage's attempt announced (first progress event)."""
    return f"plan:{int(stage)}.{int(attempt)}"


def done_problem(result: Any, planned_rounds: int | None) -> str:
    """Why a `done` does not prove its stage completed ("" when it does).

    Once a stage announced its plan (progress events carry `rounds`), a done must carry the result
    of the whole plan: `rounds` equal to it and the `final_digest` of the last aggregate."""
    if planned_rounds is None:
        return ""
    if not isinstance(result, dict):
        return f"it carries no result (the plan is {planned_rounds} rounds)"
    rounds, digest = result.get("rounds"), result.get("final_digest")
    if rounds != planned_rounds:
        return f"it claims {rounds!r} rounds, the plan is {planned_rounds}"
    if not (isinstance(digest, str) and digest):
        return "it carries no final_digest of the last aggregate"
    return ""


def _odd_one_out(counts: dict[str, Any]) -> str:
    """The node whose count differs from the majority (the likeliest misconfigured one)."""
    tally: dict[int | None, list[str]] = {}
    for n, c in sorted(counts.items()):
        tally.setdefault(c, []).append(n)
    groups = sorted(tally.values(), key=len)
    return groups[0][0] if len(groups) > 1 and len(groups[0]) < len(groups[-1]) else ""


def missing_nodes(participants: list[str], alive: set[str]) -> list[str]:
    """Participants without a live heartbeat, in config order."""
    return [n for n in participants if n not in alive]


def event_time(msg: dict) -> float:
    """When a node says an event happened, never later than now (a node's clock may run ahead)."""
    ts = msg.get("ts")
    now = time.time()
    return min(float(ts), now) if isinstance(ts, (int, float)) and ts > 0 else now


def failure_of(msg: dict, participants: list[str]) -> tuple[str, str]:
    """(node to record, reason) of an `error` event.

    The node whose check failed (a wrongly shaped upload, a failed set-up: the event's `blame`) is
    the one recorded; the reporting node only noticed it."""
    node, message = msg.get("node", ""), msg["message"]
    blamed = msg.get("blame") if msg.get("blame") in participants else node
    reason = message if message.startswith(f"{blamed}:") else f"{blamed}: {message}"
    if blamed != node:
        reason += f" (reported by {node})"
    return blamed, reason


def after_end_status(job: Any, msg: dict | None) -> NodeStatus | None:
    """After a job ended: the node's status to record when `msg` says it stopped (else None)."""
    if not msg or msg["type"] not in ("status", "error") or msg.get("node") not in job.participants:
        return None
    status = job.nodes.get(msg["node"], NodeStatus())
    if status.state in (NodeState.DONE, NodeState.FAILED):
        return None
    status.state = NodeState.STOPPED if msg["type"] == "error" or msg.get("state") == "stopped" else status.state
    return status
