"""Pure decisions of the scheduler: is a stage complete, what comes next, who is missing."""
from __future__ import annotations

from dataclasses import dataclass

from xfed.broker.jobstore import NodeStatus
from xfed.broker.messages import NodeState, StageAction


@dataclass(frozen=True)
class StageDecision:
    """`stage` is the next stage (NEXT); `reason`/`node` say why (FAIL)."""

    action: StageAction
    stage: int = -1
    reason: str = ""
    node: str = ""


def decide_after_stage(stage: int, participants: list[str], nodes: dict[str, NodeStatus]) -> StageDecision:
    """What to do once node statuses change during `stage`.

    Every participant reports `done` with the length of its own stage list; they must agree
    (XFL runs stage k on every node), and the job moves on only when all are done.
    """
    # a node dropped from a stage that tolerates dropouts (scheduler.dropouts) is not waited for
    present = [n for n in participants if nodes.get(n, NodeStatus()).state is not NodeState.DROPPED]
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
    n_stages = distinct.pop()
    if stage + 1 < n_stages:
        return StageDecision(StageAction.NEXT, stage=stage + 1)
    return StageDecision(StageAction.SUCCESS)


def _odd_one_out(counts: dict[str, int | None]) -> str:
    """The node whose count differs from the majority (the likeliest misconfigured one)."""
    tally: dict[int | None, list[str]] = {}
    for n, c in sorted(counts.items()):
        tally.setdefault(c, []).append(n)
    groups = sorted(tally.values(), key=len)
    return groups[0][0] if len(groups) > 1 and len(groups[0]) < len(groups[-1]) else ""


def missing_nodes(participants: list[str], alive: set[str]) -> list[str]:
    """Participants without a live heartbeat, in config order."""
    return [n for n in participants if n not in alive]
