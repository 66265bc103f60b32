"""Job state in Redis: one hash per job (state machine, stage, reason, per-node state, timestamps).

The state machine itself (`JobState`, `can_transition`) is pure logic; `JobStore` applies it
atomically in Redis with a compare-and-set script, so a late stop can never overwrite a failure.
Everything the scheduler knows about a job lives here, which is what lets a restarted scheduler
re-attach to running jobs.
"""
from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import redis

from xfed.broker.messages import NodeState
from xfed.errors import BrokerError, JobError


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


def _s(v: bytes | str | None) -> str:
    if v is None:
        return ""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _f(v: bytes | str | None) -> float | None:
    try:
        return float(_s(v)) if v not in (None, b"", "") else None
    except ValueError:
        return None


def _i(v: bytes | str | None, default: int | None = None) -> int | None:
    try:
        return int(_s(v)) if v not in (None, b"", "") else default
    except ValueError:
        return default


def _problems(h: dict[str, Any]) -> list[str]:
    """Why a job hash cannot be trusted (empty when it reads well)."""
    problems = []
    state = h.get("state")
    if state in (None, b"", ""):
        problems.append("no state field (half-written, or re-created after Redis lost its data)")
    elif _s(state) not in {s.value for s in JobState} or _s(state) == JobState.CORRUPT.value:
        problems.append(f"unknown state {_s(state)[:40]!r}")
    for name in ("stage", "attempt"):
        if h.get(name) not in (None, b"", "") and _i(h.get(name)) is None:
            problems.append(f"{name} {_s(h.get(name))[:40]!r} is not an integer")
    try:
        participants = json.loads(_s(h.get("participants")) or "null")
    except ValueError:
        participants = None
    if not (isinstance(participants, list) and participants and all(isinstance(p, str) for p in participants)):
        problems.append("participants missing or not a list of node ids")
    return problems


def job_from_hash(job_id: str, h: dict) -> Job:
    """Build a Job from HGETALL output (bytes or str keys); pure, used by tests and the client.

    A record that does not read well comes back as state CORRUPT with the reason (never raises)."""
    h = {_s(k): v for k, v in h.items()}
    problems = _problems(h)
    try:
        participants = json.loads(_s(h.get("participants")) or "[]")
        if not isinstance(participants, list):
            participants = []
    except ValueError:
        participants = []
    if problems:
        return Job(job_id=job_id, state=JobState.CORRUPT, stage=_i(h.get("stage"), -1),
                   reason=f"unreadable job record {job_id}: {'; '.join(problems)}",
                   participants=[str(p) for p in participants], created=_f(h.get("created")) or 0.0,
                   updated=_f(h.get("updated")) or 0.0)
    nodes = {k[5:]: NodeStatus.from_json(v) for k, v in h.items() if k.startswith("node:")}
    known = {"state", "stage", "attempt", "n_stages", "reason", "node", "participants", "created", "started",
             "ended", "updated"}
    return Job(
        job_id=job_id, state=parse_state(h.get("state"), job_id=job_id), stage=_i(h.get("stage"), -1),
        attempt=_i(h.get("attempt"), 0), n_stages=_i(h.get("n_stages")), reason=_s(h.get("reason")),
        node=_s(h.get("node")), participants=[str(p) for p in participants],
        created=_f(h.get("created")) or 0.0, started=_f(h.get("started")), ended=_f(h.get("ended")),
        updated=_f(h.get("updated")) or 0.0, nodes=nodes,
        extra={k: _s(v) for k, v in h.items() if k not in known and not k.startswith("node:")},
    )


# Atomic compare-and-set of the state field: KEYS[1] job hash; ARGV[1] new state; ARGV[2] comma
# separated allowed old states; ARGV[3] now (sets `started` on the first RUNNING); ARGV[4..] field/value
# pairs written with it.
_CAS = """
local old = redis.call('HGET', KEYS[1], 'state')
if not old then return -1 end
local allowed = ',' .. ARGV[2] .. ','
if not string.find(allowed, ',' .. old .. ',', 1, true) then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
if ARGV[1] == 'RUNNING' then redis.call('HSETNX', KEYS[1], 'started', ARGV[3]) end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


# HSET only into a job hash that exists: after Redis lost its data, a late write (a cursor, a node's
# status) must not re-create a record with no state. KEYS[1] job hash; ARGV field/value pairs.
_HSET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


# Write back the record of an ended job a Redis failover lost entirely (xfed/scheduler/rollback.py),
# unless a record is there again. KEYS[1] job hash; ARGV[1] ttl; ARGV[2..] field/value pairs.
_RESTORE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


_NEXT_ID = """
local v = redis.call('INCR', KEYS[1])
local floor = tonumber(ARGV[1])
if v <= floor then
  v = floor + 1
  redis.call('SET', KEYS[1], v)
end
return v
"""


class JobStore:
    """Jobs in Redis: ids from an atomic counter, a hash per job, an index for `list`, expiry at the end."""

    def __init__(self, r: redis.Redis, keys, *, retention_s: float = 7 * 24 * 3600) -> None:
        self.r = r
        self.keys = keys
        self.retention_s = retention_s
        self._cas = r.register_script(_CAS)
        self._next_id = r.register_script(_NEXT_ID)
        self._hset_if_exists = r.register_script(_HSET_IF_EXISTS)
        self._restore = r.register_script(_RESTORE)

    # -- creation / reading -------------------------------------------------------------
    def new_job_id(self, *, above: int = 0) -> str:
        """Next id from the atomic counter, never <= `above` (ids the caller saw before Redis lost its data)."""
        return str(self._call(self._next_id, keys=[self.keys.job_counter()], args=[int(above)]))

    def create(self, participants: list[str], *, attempt: int = 0, extra: dict[str, str] | None = None,
               job_id: str | None = None, above: int = 0) -> str:
        job_id = job_id or self.new_job_id(above=above)
        now = time.time()
        mapping: dict[str, str] = {
            # the job's identity beyond its id: output folders and resume states carry it, so a Redis that
            # forgot its data (ids restart) cannot make a new job write over, or resume from, an old one's files
            "uid": secrets.token_hex(8),
            "state": JobState.PENDING.value, "stage": "-1", "attempt": str(attempt),
            "participants": json.dumps(list(participants)), "created": repr(now), "updated": repr(now),
        }
        for n in participants:
            mapping[f"node:{n}"] = NodeStatus(updated=now).to_json()
        mapping.update(extra or {})
        pipe = self.r.pipeline(transaction=False)  # two hash slots: no MULTI (Redis Cluster)
        pipe.hset(self.keys.job(job_id), mapping=mapping)
        pipe.zadd(self.keys.jobs_index(), {job_id: int(job_id) if job_id.isdigit() else now})
        self._call(pipe.execute)
        return job_id

    def restore(self, job: Job) -> bool:
        """Write `job` (an ended job's last snapshot) back where Redis has no record of it any more;
        False when a record is there. The index entry and the retention follow as after any end."""
        mapping: dict[str, str] = {**job.extra, "state": job.state.value, "stage": str(job.stage),
                                   "attempt": str(job.attempt), "reason": job.reason, "node": job.node,
                                   "participants": json.dumps(job.participants), "created": repr(job.created),
                                   "updated": repr(time.time()), "ended": repr(job.ended or time.time())}
        if job.started is not None:
            mapping["started"] = repr(job.started)
        if job.n_stages is not None:
            mapping["n_stages"] = str(job.n_stages)
        mapping.update({f"node:{n}": s.to_json() for n, s in job.nodes.items()})
        args = [max(1, int(self.retention_s)), *(x for kv in mapping.items() for x in kv)]
        if self._call(self._restore, keys=[self.keys.job(job.job_id)], args=args) != 1:
            return False
        self._call(self.r.zadd, self.keys.jobs_index(),
                   {job.job_id: int(job.job_id) if job.job_id.isdigit() else job.created})
        return True

    def get(self, job_id: str) -> Job | None:
        h = self._call(self.r.hgetall, self.keys.job(job_id))
        if not h:
            return None
        job = job_from_hash(str(job_id), h)
        if job.state is JobState.CORRUPT:  # say how to get rid of it, with the real key names
            job.reason += (f" (inspect: HGETALL {self.keys.job(job_id)}; remove: DEL {self.keys.job(job_id)} "
                           f"and ZREM {self.keys.jobs_index()} {job_id})")
        return job

    def uid(self, job_id: str) -> str:
        """The job's uid ("" for a job created before uids, or one that no longer exists)."""
        return _s(self._call(self.r.hget, self.keys.job(job_id), "uid"))

    def require(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job is None:
            raise JobError(f"job {job_id}: no such job (unknown id, or expired)")
        return job

    def state(self, job_id: str) -> JobState | None:
        """The job's state (CORRUPT when unreadable), None when there is no such hash."""
        v = self._call(self.r.hget, self.keys.job(job_id), "state")
        if v:
            return parse_state(v, job_id=job_id)
        return JobState.CORRUPT if self._call(self.r.exists, self.keys.job(job_id)) else None

    def position(self, job_id: str) -> tuple[str | None, int | None, int | None]:
        """(state, stage, attempt) as stored, None for what is missing: the cheap read a stage polls."""
        state, stage, attempt = self._call(self.r.hmget, self.keys.job(job_id), "state", "stage", "attempt")
        return (None if state is None else _s(state), _i(stage), _i(attempt))

    def job_ids(self, *, newest_first: bool = True, limit: int = 100) -> list[str]:
        ids = self._call(self.r.zrange, self.keys.jobs_index(), 0, limit - 1, desc=newest_first)
        return [_s(i) for i in ids]

    def list(self, *, limit: int = 100) -> list[Job]:
        jobs, gone = [], []
        for job_id in self.job_ids(limit=limit):
            job = self.get(job_id)
            if job is None:
                gone.append(job_id)
            else:
                jobs.append(job)
        if gone:  # expired hashes: tidy the index lazily
            self._call(self.r.zrem, self.keys.jobs_index(), *gone)
        return jobs

    def active(self) -> list[Job]:
        """Jobs PENDING or RUNNING (CORRUPT records are skipped: nothing can run them)."""
        return [j for j in self.list(limit=1000) if j.active]

    def latest(self) -> Job | None:
        ids = self.job_ids(limit=20)
        for job_id in ids:
            job = self.get(job_id)
            if job is not None:
                return job
        return None

    # -- writing --------------------------------------------------------------------------
    def transition(self, job_id: str, new: JobState, **fields: Any) -> bool:
        """Move the job to `new` if the state machine allows it from its current state (atomic).

        Returns False when it does not (e.g. a stop arriving after the job already failed)."""
        allowed_from = [s.value for s, targets in _ALLOWED.items() if new in targets]
        now = time.time()
        fields.setdefault("updated", repr(now))
        if new.terminal:
            fields.setdefault("ended", repr(now))
        args: list[str] = [new.value, ",".join(allowed_from), repr(now)]
        for k, v in fields.items():
            args += [k, v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else str(v)]
        rc = self._call(self._cas, keys=[self.keys.job(job_id)], args=args)
        if rc == -1:
            raise JobError(f"job {job_id}: no such job")
        if rc == 1:
            self.signal(job_id, new.value)
        return rc == 1

    def wait_signal(self, job_id: str, last_id: bytes | str, block_s: float) -> bytes | str:
        """Block up to `block_s` for a state change of the job after `last_id` ("0-0": any); the id
        of the newest one seen (`last_id` when none came). BrokerError when Redis does not answer."""
        key = self.keys.job_signal(job_id)
        reply = self._call(self.r.xread, {key: last_id}, count=16, block=max(1, int(block_s * 1000)))
        if isinstance(reply, dict):  # RESP3
            reply = list(reply.items())
        for _key, entries in reply or []:
            if entries:
                last_id = entries[-1][0]
        return last_id

    def signal(self, job_id: str, what: str) -> None:
        """Wake the job's stop watchers (`xfed.node.context.StopWatcher` blocks on this stream).

        Best effort and after the state is written: a watcher that misses it (a Redis blip, a user
        without the key) still reads the state on its periodic check."""
        pipe = self.r.pipeline(transaction=False)
        pipe.xadd(self.keys.job_signal(job_id), {b"s": what}, maxlen=16, approximate=False)
        pipe.expire(self.keys.job_signal(job_id), max(1, int(self.retention_s)))
        try:
            pipe.execute()
        except redis.RedisError:
            pass

    def resume(self, job_id: str, *, stage: int, attempt: int) -> bool:
        """FAILED/STOPPED -> RUNNING as a new attempt at `stage` (atomic); keeps the keys from expiring."""
        now = repr(time.time())
        args = [JobState.RUNNING.value, ",".join(s.value for s in RESUMABLE), now,
                "stage", str(stage), "attempt", str(attempt), "reason", "", "node", "", "ended", "",
                "updated", now, "resumed", now]
        if self._call(self._cas, keys=[self.keys.job(job_id)], args=args) != 1:
            return False
        pipe = self.r.pipeline(transaction=False)
        pipe.persist(self.keys.job(job_id))
        pipe.persist(self.keys.job_events(job_id))
        self._call(pipe.execute)
        self.signal(job_id, "resumed")
        return True

    def rejoins(self, job_id: str, stage: int, attempt: int) -> dict[str, int]:
        """{node: incarnation} of the nodes the scheduler re-dispatched into (stage, attempt) after they
        dropped and restarted (field `rejoin_field`, written by xfed.scheduler.dropouts); {} if none."""
        raw = self._call(self.r.hget, self.keys.job(job_id), rejoin_field(stage, attempt))
        try:
            record = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        if not isinstance(record, dict):
            return {}
        out = {}
        for node, entry in record.items():
            k = entry.get("incarnation") if isinstance(entry, dict) else None
            if isinstance(k, int) and not isinstance(k, bool) and k > 0:
                out[str(node)] = k
        return out

    def set_fields(self, job_id: str, **fields: Any) -> bool:
        """Write fields of an existing job hash; False (nothing written) when the hash is gone."""
        mapping = {k: v if isinstance(v, str) else str(v) for k, v in fields.items()}
        mapping.setdefault("updated", repr(time.time()))
        args = [x for kv in mapping.items() for x in kv]
        return self._call(self._hset_if_exists, keys=[self.keys.job(job_id)], args=args) == 1

    def set_node(self, job_id: str, node: str, status: NodeStatus) -> bool:
        """Write one node's status into an existing job hash; False when the hash is gone."""
        status.updated = time.time()
        return self._call(self._hset_if_exists, keys=[self.keys.job(job_id)],
                          args=[f"node:{node}", status.to_json()]) == 1

    def node(self, job_id: str, node: str) -> NodeStatus:
        return NodeStatus.from_json(self._call(self.r.hget, self.keys.job(job_id), f"node:{node}"))

    def expire(self, job_id: str, *, extra_keys: tuple[str, ...] = ()) -> int:
        """After a job ends: delete its mailboxes now; its hash and events expire after `retention_s`."""
        deleted = 0
        mailboxes = self._call(lambda: [k for pattern in (self.keys.mailbox_pattern(job_id), self.keys.shared_pattern(job_id))
                                        for k in self.r.scan_iter(match=pattern, count=500)])
        if mailboxes:
            deleted = self._call(self.r.delete, *mailboxes)
        ttl = max(1, int(self.retention_s))
        pipe = self.r.pipeline(transaction=False)
        for key in (self.keys.job(job_id), self.keys.job_events(job_id), self.keys.job_signal(job_id), *extra_keys):
            pipe.expire(key, ttl)
        self._call(pipe.execute)
        return deleted

    # -- errors -----------------------------------------------------------------------------
    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as err:
            raise BrokerError(f"job store: {type(err).__name__}: {err}") from err
