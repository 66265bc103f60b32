"""A job's record as the broker stores it: the state machine, each node's status, and the reader
of a job hash that may be half-written or corrupt (pure: no Redis; `jobstore.JobStore` writes them).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from xfed.broker.messages import NodeState


class JobState(str, Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESSFUL = "SUCCESSFUL"
    FAILED = "FAILED"
    STOPPED = "STOPPED"
    # never written: what a record reads as when it is unreadable or half-written (unknown state,
    # no state field, malformed core fields). It is shown with the reason and otherwise skipped:
    # nothing runs it, resumes it or writes into it.
    CORRUPT = "CORRUPT"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobState.SUCCESSFUL, JobState.FAILED, JobState.STOPPED, JobState.CORRUPT})
ACTIVE = frozenset({JobState.PENDING, JobState.RUNNING})

# RUNNING -> RUNNING is a stage advance; terminal states are final (first outcome wins).
_ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.RUNNING, JobState.FAILED, JobState.STOPPED}),
    JobState.RUNNING: frozenset({JobState.RUNNING, JobState.SUCCESSFUL, JobState.FAILED, JobState.STOPPED}),
    JobState.SUCCESSFUL: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.STOPPED: frozenset(),
    JobState.CORRUPT: frozenset(),
}

# What a node can be doing within a job (per-node table of `status`).


def rejoin_field(stage: int, attempt: int) -> str:
    """Job hash field: {node: {"incarnation": k, "admitted": round or null}} of the stage's rejoins."""
    return f"rejoin:{int(stage)}.{int(attempt)}"


def can_transition(old: JobState, new: JobState) -> bool:
    """Whether the job state machine allows old -> new."""
    return new in _ALLOWED[old]


def states_before(new: JobState) -> list[JobState]:
    """The states the state machine allows to move to `new`."""
    return [old for old, targets in _ALLOWED.items() if new in targets]


# The one way out of a terminal state: `--resume` starts a new attempt (RUNNING, attempt + 1).
RESUMABLE = frozenset({JobState.FAILED, JobState.STOPPED})


def can_resume(state: JobState) -> bool:
    return state in RESUMABLE


def parse_state(value: str | bytes | None, *, job_id: str = "?") -> JobState:
    """The state a stored value stands for; CORRUPT for anything else (never raises)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    try:
        return JobState(value)
    except ValueError:
        return JobState.CORRUPT


@dataclass
class NodeStatus:
    """One node's view inside a job: stored as JSON in the job hash field `node:<id>`."""

    state: NodeState = NodeState.PENDING
    stage: int = -1
    pid: int | None = None
    message: str = ""
    progress: dict[str, Any] = field(default_factory=dict)
    n_stages: int | None = None
    result: dict[str, Any] | None = None
    updated: float = 0.0
    finished: float | None = None   # when the node reported its outcome (event time), for the job's `ended`

    def __post_init__(self) -> None:
        self.state = NodeState(self.state)  # ValueError for a word that is not a node state

    def to_json(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"), default=str)

    @classmethod
    def from_json(cls, raw: str | bytes | None) -> NodeStatus:
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return cls(message="unreadable node status")
        if not isinstance(data, dict):
            return cls(message="unreadable node status")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        try:
            return cls(**known)
        except (TypeError, ValueError):
            return cls(message="unreadable node status")


@dataclass
class Job:
    """A snapshot of one job hash."""

    job_id: str
    state: JobState
    stage: int = -1
    attempt: int = 0
    n_stages: int | None = None
    reason: str = ""
    node: str = ""
    participants: list[str] = field(default_factory=list)
    created: float = 0.0
    started: float | None = None
    ended: float | None = None
    updated: float = 0.0
    nodes: dict[str, NodeStatus] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job_id, "state": self.state.value, "stage": self.stage, "attempt": self.attempt,
            "n_stages": self.n_stages, "reason": self.reason, "node": self.node,
            "participants": self.participants, "created": self.created, "started": self.started,
            "ended": self.ended, "updated": self.updated, "uid": self.extra.get("uid", ""),
            "nodes": {n: s.__dict__ for n, s in self.nodes.items()},
        }


def field_text(v: bytes | str | None) -> str:
    if v is None:
        return ""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def field_float(v: bytes | str | None) -> float | None:
    try:
        return float(field_text(v)) if v not in (None, b"", "") else None
    except ValueError:
        return None


def field_int(v: bytes | str | None, default: int | None = None) -> int | None:
    try:
        return int(field_text(v)) if v not in (None, b"", "") else default
    except ValueError:
        return default


def _problems(h: dict[str, Any]) -> list[str]:
    """Why a job hash cannot be trusted (empty when it reads well)."""
    problems = []
    state = h.get("state")
    if state in (None, b"", ""):
        problems.append("no state field (half-written, or re-created after Redis lost its data)")
    elif field_text(state) not in {s.value for s in JobState} or field_text(state) == JobState.CORRUPT.value:
        problems.append(f"unknown state {field_text(state)[:40]!r}")
    for name in ("stage", "attempt"):
        if h.get(name) not in (None, b"", "") and field_int(h.get(name)) is None:
            problems.append(f"{name} {field_text(h.get(name))[:40]!r} is not an integer")
    try:
        participants = json.loads(field_text(h.get("participants")) or "null")
    except ValueError:
        participants = None
    if not (isinstance(participants, list) and participants and all(isinstance(p, str) for p in participants)):
        problems.append("participants missing or not a list of node ids")
    return problems


def job_from_hash(job_id: str, h: dict) -> Job:
    """Build a Job from HGETALL output (bytes or str keys); pure, used by tests and the client.

    A record that does not read well comes back as state CORRUPT with the reason (never raises)."""
    h = {field_text(k): v for k, v in h.items()}
    problems = _problems(h)
    try:
        participants = json.loads(field_text(h.get("participants")) or "[]")
        if not isinstance(participants, list):
            participants = []
    except ValueError:
        participants = []
    if problems:
        return Job(job_id=job_id, state=JobState.CORRUPT, stage=field_int(h.get("stage"), -1),
                   reason=f"unreadable job record {job_id}: {'; '.join(problems)}",
                   participants=[str(p) for p in participants], created=field_float(h.get("created")) or 0.0,
                   updated=field_float(h.get("updated")) or 0.0)
    nodes = {k[5:]: NodeStatus.from_json(v) for k, v in h.items() if k.startswith("node:")}
    known = {"state", "stage", "attempt", "n_stages", "reason", "node", "participants", "created", "started",
             "ended", "updated"}
    return Job(
        job_id=job_id, state=parse_state(h.get("state"), job_id=job_id), stage=field_int(h.get("stage"), -1),
        attempt=field_int(h.get("attempt"), 0), n_stages=field_int(h.get("n_stages")), reason=field_text(h.get("reason")),
        node=field_text(h.get("node")), participants=[str(p) for p in participants],
        created=field_float(h.get("created")) or 0.0, started=field_float(h.get("started")), ended=field_float(h.get("ended")),
        updated=field_float(h.get("updated")) or 0.0, nodes=nodes,
        extra={k: field_text(v) for k, v in h.items() if k not in known and not k.startswith("node:")},
    )


def job_to_hash(job: Job) -> dict[str, str]:
    """The hash fields of `job`: what `job_from_hash` reads back as the same Job (unset optional times and
    n_stages are left out, as a record that never had them)."""
    h: dict[str, str] = {**job.extra, "state": job.state.value, "stage": str(job.stage), "attempt": str(job.attempt),
                         "reason": job.reason, "node": job.node, "participants": json.dumps(job.participants),
                         "created": repr(job.created), "updated": repr(job.updated)}
    for name in ("started", "ended"):
        if getattr(job, name) is not None:
            h[name] = repr(getattr(job, name))
    if job.n_stages is not None:
        h["n_stages"] = str(job.n_stages)
    h.update({f"node:{n}": s.to_json() for n, s in job.nodes.items()})
    return h
