"""Client -> scheduler requests and their replies: a request stream and one reply list per request.

The client appends its request (with a fresh `request_id`) to the requests stream and waits on
the reply key with BLPOP; the scheduler answers by RPUSH with a TTL, so an answer nobody waits
for disappears by itself.
"""
from __future__ import annotations

import json
import uuid
from typing import Any

import redis

from xfed.broker.keys import Keys
from xfed.broker.streams import ControlStream
from xfed.errors import BrokerError, JobError

REPLY_TTL_S = 60
REQUESTS_MAXLEN = 10_000


def scheduler_alive(r: redis.Redis, keys: Keys) -> bool:
    """Whether the scheduler's heartbeat key is still refreshed."""
    try:
        ttl = r.pttl(keys.scheduler())
    except redis.RedisError as err:
        raise BrokerError(f"reading the scheduler's heartbeat: {err}") from err
    return isinstance(ttl, int) and ttl > 0


def request(r: redis.Redis, keys: Keys, msg: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """Post `msg` to the scheduler and wait up to `timeout` seconds for its `{ok: bool, ...}` reply."""
    request_id = uuid.uuid4().hex
    ControlStream(r, keys.requests(), maxlen=REQUESTS_MAXLEN).add({**msg, "request_id": request_id})
    try:
        got = r.blpop([keys.reply(request_id)], timeout=timeout)
    except redis.RedisError as err:
        raise BrokerError(f"waiting for the scheduler's reply: {err}") from err
    if not got:
        raise JobError(f"the scheduler did not answer the {msg['type']} request within {timeout:g} s")
    try:
        reply = json.loads(got[1])
    except ValueError:
        raise JobError("the scheduler's reply is not valid JSON") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise JobError("the scheduler's reply is malformed")
    return reply


def send_reply(r: redis.Redis, keys: Keys, request_id: str, reply: dict[str, Any]) -> None:
    """The scheduler's answer to one request (kept REPLY_TTL_S seconds)."""
    key = keys.reply(request_id)
    pipe = r.pipeline(transaction=True)
    pipe.rpush(key, json.dumps(reply))
    pipe.expire(key, REPLY_TTL_S)
    pipe.execute()
