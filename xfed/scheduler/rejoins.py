"""Pure decisions for a dropped label trainer that comes back (issue 16: rejoin within the same job).

A stage that tolerates dropouts (xfed.scheduler.dropouts) marks a dead label trainer `dropped`.
When that node's daemon is alive again (restarted: a new heartbeat), the scheduler re-dispatches
the running stage to it as *incarnation* k = previous + 1 and records it in the job field
`rejoin:S.A` = {node: {"incarnation": k, "admitted": null}} (xfed.broker.jobstore.rejoin_field).
That record is the membership record the stage's root reads once per round (StageContext.membership):
the root then listens for the node's join request on the mailboxes of incarnation k and admits it
at the next round boundary (xfed.aggregation.secagg_join), reporting {"secagg": {"joined": {node: k},
"from_round": r}}; the scheduler stores r as "admitted". Until it is admitted a rejoiner is not
waited for: the stage may end without it (a restart when the job is about to end), and its stage
process then stops with the job. Once admitted it is a member like the others (waited for; if it
dies again it is dropped again, and may come back as k + 1). Events of an older incarnation
(a superseded stage process) are ignored.
"""
from __future__ import annotations

import json
from typing import Any

from xfed.broker.jobrecord import Job, rejoin_field
from xfed.broker.messages import NodeState
from xfed.scheduler.dropouts import DropoutPolicy


def rejoin_record(job: Job) -> dict[str, dict[str, Any]]:
    """{node: {"incarnation": k, "admitted": round | None}} for the job's current stage and attempt."""
    raw = job.extra.get(rejoin_field(job.stage, job.attempt))
    try:
        record = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    if not isinstance(record, dict):
        return {}
    out = {}
    for node, entry in record.items():
        if not isinstance(entry, dict):
            continue
        k, admitted = entry.get("incarnation"), entry.get("admitted")
        if isinstance(k, int) and not isinstance(k, bool) and k > 0:
            out[str(node)] = {"incarnation": k,
                              "admitted": admitted if isinstance(admitted, int) and not isinstance(admitted, bool)
                              else None}
    return out


def incarnation_of(job: Job, node: str) -> int:
    """The node's current incarnation in the running stage (0: never restarted into it)."""
    return rejoin_record(job).get(node, {}).get("incarnation", 0)


def rejoin_candidates(job: Job, policy: DropoutPolicy | None, alive: set[str]) -> list[str]:
    """Dropped label trainers of a tolerant stage whose daemon is alive again, in policy order (none
    when the stage's operator does not support rejoining: its root announced `rejoin: false`)."""
    if policy is None or not policy.rejoin or not job.active:
        return []
    return [n for n in policy.trainers
            if n in alive and job.nodes.get(n) is not None and job.nodes[n].state == NodeState.DROPPED]


def with_rejoin(job: Job, node: str) -> tuple[str, int]:
    """(new record as JSON, the node's new incarnation) for re-dispatching `node` into the stage."""
    record = rejoin_record(job)
    k = record.get(node, {}).get("incarnation", 0) + 1
    record[node] = {"incarnation": k, "admitted": None}
    return json.dumps(record, sort_keys=True), k


def with_admission(job: Job, data: Any) -> tuple[str, dict[str, int], int] | None:
    """(new record as JSON, {node: incarnation} admitted, first round) for a root's `joined` report;
    None when `data` is no such report or names no pending rejoin of the current incarnation."""
    info = data.get("secagg") if isinstance(data, dict) else None
    if not isinstance(info, dict) or not isinstance(info.get("joined"), dict):
        return None
    first = info.get("from_round")
    if not isinstance(first, int) or isinstance(first, bool) or first < 0:
        return None
    record = rejoin_record(job)
    admitted = {n: k for n, k in info["joined"].items()
                if n in record and record[n]["incarnation"] == k and record[n]["admitted"] is None}
    if not admitted:
        return None
    for n in admitted:
        record[n]["admitted"] = first
    return json.dumps(record, sort_keys=True), admitted, first


def not_yet_admitted(job: Job) -> set[str]:
    """Rejoiners the root has not admitted yet: the stage does not wait for them."""
    return {n for n, e in rejoin_record(job).items() if e["admitted"] is None}


def stale_incarnation(job: Job, msg: dict) -> bool:
    """True for an event of an older incarnation of its node (a stage process a rejoin superseded)."""
    inc = msg.get("incarnation", 0)
    inc = inc if isinstance(inc, int) and not isinstance(inc, bool) else 0
    return inc < incarnation_of(job, str(msg.get("node", "")))
