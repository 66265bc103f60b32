"""Pure decisions for stages that tolerate dropouts (dropout-tolerant secure aggregation, issue 16).

The stage's aggregator announces, in a `metrics` event {"secagg": {"threshold", "min_parties",
"trainers", ...}}, that it can finish without some label trainers; the scheduler keeps that as the
job field `dropout` (bound to the stage and attempt), and per round {"secagg": {"round",
"contributors", "dropped"}} as `secagg_rounds` (who contributed, for `-c status`). A label trainer
whose heartbeat expires is then marked `dropped` instead of failing the job, as long as at least
`min_parties` label trainers remain; below that the job FAILS naming every dropped one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from xfed.broker.jobrecord import Job

DROPPED = "dropped"
MAX_ROUNDS_KEPT = 200


@dataclass(frozen=True)
class DropoutPolicy:
    stage: int
    attempt: int
    min_parties: int
    trainers: tuple[str, ...]
    rejoin: bool = False  # the stage's operator lets a restarted trainer rejoin (xfed.scheduler.rejoins)

    def to_json(self) -> str:
        return json.dumps({"stage": self.stage, "attempt": self.attempt, "min_parties": self.min_parties,
                           "trainers": list(self.trainers), "rejoin": self.rejoin})


def policy_from_event(job: Job, data: Any) -> DropoutPolicy | None:
    """The policy a root's secagg announcement sets for the job's current stage, or None."""
    info = data.get("secagg") if isinstance(data, dict) else None
    if not isinstance(info, dict) or "threshold" not in info:
        return None
    floor, trainers = info.get("min_parties", info.get("threshold")), info.get("trainers")
    if (isinstance(floor, bool) or not isinstance(floor, int) or not isinstance(trainers, list)
            or not all(t in job.participants for t in trainers) or not 0 < floor <= len(trainers)):
        return None
    return DropoutPolicy(job.stage, job.attempt, floor, tuple(trainers), info.get("rejoin") is True)


def policy_of(job: Job) -> DropoutPolicy | None:
    """The job's stored policy if it belongs to the stage and attempt now running."""
    raw = job.extra.get("dropout")
    if not raw:
        return None
    try:
        d = json.loads(raw)
        policy = DropoutPolicy(int(d["stage"]), int(d["attempt"]), int(d["min_parties"]), tuple(d["trainers"]),
                               d.get("rejoin") is True)
    except (ValueError, KeyError, TypeError):
        return None
    return policy if (policy.stage, policy.attempt) == (job.stage, job.attempt) else None


def note_secagg(jobs: Any, job: Job, data: Any) -> None:
    """Keep a root's announcement (job field `dropout`) or round record (`secagg_rounds`) of a metrics event."""
    policy = policy_from_event(job, data)
    if policy is not None:
        job.extra["dropout"] = policy.to_json()
        jobs.set_fields(job.job_id, dropout=job.extra["dropout"])
        return
    record = round_record(job, data)
    if record is not None:
        job.extra["secagg_rounds"] = record
        jobs.set_fields(job.job_id, secagg_rounds=record)


def round_record(job: Job, data: Any) -> str | None:
    """`secagg_rounds` with this round's contributors appended (JSON), or None if `data` is no round record."""
    info = data.get("secagg") if isinstance(data, dict) else None
    if not isinstance(info, dict) or not isinstance(info.get("round"), int):
        return None
    try:
        rounds = json.loads(job.extra.get("secagg_rounds") or "[]")
    except ValueError:
        rounds = []
    rounds.append({"stage": job.stage, "attempt": job.attempt, "round": info["round"],
                   "contributors": [str(c) for c in info.get("contributors") or []],
                   "dropped": [str(c) for c in info.get("dropped") or []]})
    return json.dumps(rounds[-MAX_ROUNDS_KEPT:])


@dataclass(frozen=True)
class DeadVerdict:
    """`tolerate`: mark `dropped` and go on; `fail`: end the job with `reason` naming `node`."""

    action: str
    dropped: tuple[str, ...] = ()
    reason: str = ""
    node: str = ""


def judge_dead(job: Job, policy: DropoutPolicy | None, dead: list[str], interval: float,
               why: str = "") -> DeadVerdict | None:
    """What the death of `dead` (no heartbeat, or `why`) means for `job`; None when nothing new died."""
    already = {n for n, s in job.nodes.items() if s.state == DROPPED}
    new = [n for n in dead if n not in already]
    if not new:
        return None
    why = why or f"heartbeat expired (none for {3 * interval:g} s): its daemon died or lost Redis"
    if policy is None or any(n not in policy.trainers for n in new):
        first = next((n for n in new if policy is None or n not in policy.trainers), new[0])
        others = [n for n in dead if n != first]
        return DeadVerdict("fail", reason=f"{first}: {why}" + (f"; also silent: {', '.join(others)}" if others else ""),
                           node=first)
    gone = [n for n in policy.trainers if n in already or n in dead]
    remain = len(policy.trainers) - len(gone)
    if remain < policy.min_parties:
        return DeadVerdict("fail", node=new[0], reason=(
            f"label trainers dropped: {', '.join(gone)} ({why}); {remain} of {len(policy.trainers)} remain, "
            f"the stage needs {policy.min_parties}"))
    return DeadVerdict("tolerate", dropped=tuple(new), reason=(
        f"dropped ({why}); the job continues with {remain} of {len(policy.trainers)} label trainers "
        f"(needs {policy.min_parties})"))
