"""Control messages on Redis streams: requests, node commands (consumer groups + ack) and job events.

Every entry holds one field `m` with a JSON object `{"type": ..., ...}`. Messages are validated on
read as `xfed.broker.messages.Message` (strict JSON, typed fields, a size limit); an
entry that fails comes back as an `Entry` with `error` set instead of raising, so a reader can
report it, acknowledge it and carry on. Nothing is ever unpickled or evaluated.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from xfed import strict_json
from xfed.broker.messages import MAX_STREAM_MESSAGE_BYTES, validate_message
from xfed.errors import BrokerError, FrameError
from xfed.strict_json import StrictJSONError

MAX_CONTROL_BYTES = MAX_STREAM_MESSAGE_BYTES
FIELD = b"m"


def encode_message(msg: dict[str, Any]) -> bytes:
    """JSON bytes of a control message; refuses unknown types, invalid fields and oversize."""
    validate_message(msg)
    raw = json.dumps(msg, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(raw) > MAX_CONTROL_BYTES:
        raise FrameError(f"control message {msg.get('type')!r} is {len(raw)} bytes (limit {MAX_CONTROL_BYTES})")
    return raw


def decode_message(raw: bytes | str, *, where: str = "stream") -> dict[str, Any]:
    """Parse and validate one control message (as `xfed.broker.messages.Message`); FrameError naming
    `where` if anything is off. The message comes back as the JSON object it was sent as."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if not isinstance(raw, bytes):
        raise FrameError(f"{where}: control message is {type(raw).__name__}, expected bytes")
    if len(raw) > MAX_CONTROL_BYTES:
        raise FrameError(f"{where}: control message of {len(raw)} bytes exceeds {MAX_CONTROL_BYTES}")
    try:
        msg = strict_json.parse(raw)
    except StrictJSONError as err:
        raise FrameError(f"{where}: control message is {err}") from None
    validate_message(msg, where=where)
    return msg


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

    def add_many(self, msgs: list[dict[str, Any]]) -> None:
        """Append several messages in one round trip (as `add` each, in order; one owner check).

        A message that does not validate is skipped (FrameError after the others are sent)."""
        raws, bad = [], []
        for msg in msgs:
            try:
                raws.append(encode_message(msg))
            except FrameError as err:
                bad.append(str(err))
        if raws:
            pipe = self.r.pipeline(transaction=False)
            for raw in raws:
                pipe.xadd(self.key, {FIELD: raw}, maxlen=self.maxlen, approximate=True)
            if self.owner is not None:
                pipe.exists(self.owner)
            replies = self._call(pipe.execute)
            if self.owner is not None and not replies[-1]:
                self._call(self.r.pexpire, self.key, self.orphan_ttl_ms)
        if bad:
            raise FrameError(bad[0])

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
