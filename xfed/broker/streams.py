"""Control messages on Redis streams: requests, node commands (consumer groups + ack) and job events.

Every entry holds one field `m` with a JSON object `{"type": ..., ...}`. Messages are validated on
read against the schema of their type (required fields and their JSON types, a size limit); an
entry that fails comes back as an `Entry` with `error` set instead of raising, so a reader can
report it, acknowledge it and carry on. Nothing is ever unpickled or evaluated.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import redis

from xfed.errors import BrokerError, FrameError

MAX_CONTROL_BYTES = 256 * 1024
_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # as xfed.broker.keys.check_id
FIELD = b"m"

_NUM = (int, float)
# type -> {field: accepted python types after json.loads}. Extra fields are allowed (forward compatible).
SCHEMAS: dict[str, dict[str, tuple[type, ...]]] = {
    # client -> scheduler (requests stream)
    "start": {"request_id": (str,)},
    "stop": {"request_id": (str,)},
    # scheduler -> node (node command stream)
    "run_stage": {"job": (str,), "stage": (int,), "attempt": (int,), "participants": (list,)},
    "stop_job": {"job": (str,), "reason": (str,)},
    # node -> scheduler/client (job events stream)
    "status": {"job": (str,), "node": (str,), "stage": (int,), "state": (str,), "ts": _NUM},
    "progress": {"job": (str,), "node": (str,), "stage": (int,), "data": (dict,), "ts": _NUM},
    "metrics": {"job": (str,), "node": (str,), "stage": (int,), "data": (dict,), "ts": _NUM},
    "log": {"job": (str,), "node": (str,), "stage": (int,), "data": (dict,), "ts": _NUM},
    "warning": {"job": (str,), "node": (str,), "stage": (int,), "data": (dict,), "ts": _NUM},
    "error": {"job": (str,), "node": (str,), "stage": (int,), "message": (str,), "ts": _NUM},
    "done": {"job": (str,), "node": (str,), "stage": (int,), "n_stages": (int,), "ts": _NUM},
    # scheduler -> client (job events stream): the job's own state changes
    "job": {"job": (str,), "state": (str,), "stage": (int,), "ts": _NUM},
}
EVENT_TYPES = ("status", "progress", "metrics", "log", "warning", "error", "done", "job")


def encode_message(msg: dict[str, Any]) -> bytes:
    """JSON bytes of a control message; refuses unknown types, schema violations and oversize."""
    validate_message(msg)
    raw = json.dumps(msg, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(raw) > MAX_CONTROL_BYTES:
        raise FrameError(f"control message {msg.get('type')!r} is {len(raw)} bytes (limit {MAX_CONTROL_BYTES})")
    return raw


def decode_message(raw: bytes | str, *, where: str = "stream") -> dict[str, Any]:
    """Parse and validate one control message; FrameError naming `where` if anything is off."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if not isinstance(raw, bytes):
        raise FrameError(f"{where}: control message is {type(raw).__name__}, expected bytes")
    if len(raw) > MAX_CONTROL_BYTES:
        raise FrameError(f"{where}: control message of {len(raw)} bytes exceeds {MAX_CONTROL_BYTES}")
    try:
        msg = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise FrameError(f"{where}: control message is not valid JSON ({str(err)[:80]})") from None
    validate_message(msg, where=where)
    return msg


def _no_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def validate_message(msg: Any, *, where: str = "message") -> None:
    if not isinstance(msg, dict):
        raise FrameError(f"{where}: control message must be a JSON object, got {type(msg).__name__}")
    kind = msg.get("type")
    if not isinstance(kind, str) or kind not in SCHEMAS:
        raise FrameError(f"{where}: unknown control message type {str(kind)[:40]!r}")
    for name, types in SCHEMAS[kind].items():
        if name not in msg:
            raise FrameError(f"{where}: {kind} message lacks field {name!r}")
        value = msg[name]
        # bool is an int subclass in Python; a JSON true is never a valid stage or timestamp
        if isinstance(value, bool) or not isinstance(value, types):
            raise FrameError(f"{where}: {kind}.{name} has type {type(value).__name__}, "
                             f"expected {'/'.join(t.__name__ for t in types)}")
    for name in ("job", "node", "resume"):  # ids end up in key names
        value = msg.get(name)
        if value is None or (name == "node" and value == ""):  # a job event may name no node
            continue
        if not (isinstance(value, str) and _ID_RE.match(value)):
            raise FrameError(f"{where}: {kind}.{name} is not a valid id: {str(msg[name])[:40]!r}")
    for name in ("stage", "attempt"):
        if isinstance(msg.get(name), int) and not isinstance(msg[name], bool) and not 0 <= msg[name] < 2**31:
            raise FrameError(f"{where}: {kind}.{name} out of range: {msg[name]}")


@dataclass
class Entry:
    """One stream entry: `msg` when it validated, else `error` (a one-line reason)."""

    id: str
    msg: dict[str, Any] | None = None
    error: str | None = None


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _entry(key: str, entry_id, fields) -> Entry:
    eid = _s(entry_id)
    if not fields:  # a pending entry that was deleted/trimmed comes back with no fields
        return Entry(eid, error=f"{key} entry {eid}: no content")
    raw = fields.get(FIELD, fields.get(_s(FIELD)))
    if raw is None or len(fields) != 1:
        return Entry(eid, error=f"{key} entry {eid}: expected exactly one field 'm'")
    try:
        return Entry(eid, msg=decode_message(raw, where=f"{key} entry {eid}"))
    except FrameError as err:
        return Entry(eid, error=str(err))


ORPHAN_TTL_S = 24 * 3600


class ControlStream:
    """One stream of control messages (requests, a node's commands, or a job's events).

    With `owner` (a job's hash key) appends set a TTL of `orphan_ttl_s` on the stream whenever the
    owner does not exist, so events written after data loss do not outlive it."""

    def __init__(self, r: redis.Redis, key: str, *, maxlen: int | None = 10_000, owner: str | None = None,
                 orphan_ttl_s: int = ORPHAN_TTL_S) -> None:
        self.r = r
        self.key = key
        self.maxlen = maxlen
        self.owner, self.orphan_ttl_ms = owner, int(orphan_ttl_s * 1000)

    def add(self, msg: dict[str, Any]) -> str:
        raw = encode_message(msg)
        if self.owner is None:
            return _s(self._call(self.r.xadd, self.key, {FIELD: raw}, maxlen=self.maxlen, approximate=True))
        # a job's events: when the job's hash is gone (expired, or Redis lost its data mid-job) the
        # stream this append (re-)creates gets a TTL instead of living forever. Plain commands, not a
        # script: a node's ACL user may only write the stream and only read the hash, and Redis
        # checks a script's declared keys for both. Not atomic; a job vanishing between the two
        # calls leaves this one append without a TTL, and the next append sets it.
        pipe = self.r.pipeline(transaction=False)
        pipe.xadd(self.key, {FIELD: raw}, maxlen=self.maxlen, approximate=True)
        pipe.exists(self.owner)
        entry_id, owner_exists = self._call(pipe.execute)
        if not owner_exists:
            self._call(self.r.pexpire, self.key, self.orphan_ttl_ms)
        return _s(entry_id)

    def read(self, last_id: str = "0-0", *, block_ms: int | None = None, count: int = 500) -> list[Entry]:
        """Entries after `last_id` (no group); blocks up to block_ms when there are none."""
        res = self._call(self.r.xread, {self.key: last_id}, count=count, block=block_ms)
        return [_entry(self.key, eid, f) for _, entries in (res or []) for eid, f in entries]

    def ensure_group(self, group: str, start_id: str = "0") -> None:
        try:
            self.r.xgroup_create(self.key, group, id=start_id, mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise BrokerError(f"{self.key}: cannot create group {group}: {err}") from err
        except redis.RedisError as err:
            raise BrokerError(f"{self.key}: {type(err).__name__}: {err}") from err

    def read_group(self, group: str, consumer: str, *, block_ms: int | None = None, count: int = 100,
                   pending: bool = False) -> list[Entry]:
        """New entries for this consumer (or, with pending=True, those delivered but not yet acked).

        Re-creates the group when Redis lost it (restarted without persistence)."""
        stream_id = "0" if pending else ">"
        try:
            res = self.r.xreadgroup(group, consumer, {self.key: stream_id}, count=count, block=block_ms)
        except redis.ResponseError as err:
            if "NOGROUP" not in str(err):
                raise BrokerError(f"{self.key}: {err}") from err
            self.ensure_group(group)
            return []
        except redis.RedisError as err:
            raise BrokerError(f"{self.key}: {type(err).__name__}: {err}") from err
        return [_entry(self.key, eid, f) for _, entries in (res or []) for eid, f in entries]

    def ack(self, group: str, *entry_ids: str) -> None:
        if entry_ids:
            self._call(self.r.xack, self.key, group, *entry_ids)

    def last_id(self) -> str:
        """Id of the newest entry ("0-0" when empty/missing), to read only what comes after now."""
        res = self._call(self.r.xrevrange, self.key, count=1)
        return _s(res[0][0]) if res else "0-0"

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as err:
            raise BrokerError(f"{self.key}: {type(err).__name__}: {err}") from err


def read_many(r: redis.Redis, cursors: dict[str, str], *, block_ms: int | None = None,
              count: int = 500) -> dict[str, list[Entry]]:
    """XREAD over several streams at once (the scheduler tails every running job's events)."""
    if not cursors:
        return {}
    try:
        res = r.xread(cursors, count=count, block=block_ms)
    except redis.RedisError as err:
        raise BrokerError(f"reading {len(cursors)} stream(s): {type(err).__name__}: {err}") from err
    out: dict[str, list[Entry]] = {}
    for key, entries in res or []:
        k = _s(key)
        out[k] = [_entry(k, eid, f) for eid, f in entries]
    return out
