"""Job state in Redis: one hash per job (state machine, stage, reason, per-node state, timestamps).

The state machine itself (`JobState`, `can_transition` in jobrecord.py) is pure logic; `JobStore` applies it
atomically in Redis with a compare-and-set script, so a late stop can never overwrite a failure.
Everything the scheduler knows about a job lives here, which is what lets a restarted scheduler
re-attach to running jobs.
"""
from __future__ import annotations

import json
import secrets
import time
from dataclasses import replace
from typing import Any

import redis

from xfed.broker.jobrecord import (
    RESUMABLE,
    Job,
    JobState,
    NodeStatus,
    field_int,
    field_text,
    job_from_hash,
    job_to_hash,
    parse_state,
    rejoin_field,
    states_before,
)
from xfed.errors import BrokerError, JobError

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
        now = time.time()
        mapping = job_to_hash(replace(job, updated=now, ended=job.ended or now))
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
        return field_text(self._call(self.r.hget, self.keys.job(job_id), "uid"))

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
        return (None if state is None else field_text(state), field_int(stage), field_int(attempt))

    def job_ids(self, *, newest_first: bool = True, limit: int = 100) -> list[str]:
        ids = self._call(self.r.zrange, self.keys.jobs_index(), 0, limit - 1, desc=newest_first)
        return [field_text(i) for i in ids]

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
        allowed_from = [s.value for s in states_before(new)]
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
