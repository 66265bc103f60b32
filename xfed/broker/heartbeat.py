"""Node registry and heartbeats: who is alive is whoever's TTL key has not expired yet.

The heartbeat key `node:{N}:hb` is a lease: a daemon takes it with one `SET NX PX` holding a
random token, and only then registers (role, node id, host, pid, version) in `node:{N}:info`. A
background thread renews it every `interval` seconds (TTL `ttl_factor` intervals, or longer than a
failover window plus two intervals when that is longer) with a Lua check
that the key still holds its own token, so two processes started with one node id at the same
instant cannot both run: the second waits out the TTL and gives up, and a process whose lease was
taken over (it was frozen past the TTL and another started) learns so at its next beat
(`lost` is set, `on_lost` called). A SIGKILLed daemon stops renewing and its key disappears by
itself. The thread survives Redis outages (it takes the lease again once Redis is back, in case
the restart lost the data).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from xfed.errors import BrokerError, XfedError
from xfed.version import __version__

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 2.0
TTL_FACTOR = 3

# Renew the lease KEYS[1] only while it holds our token ARGV[1]; take it again when it is gone (Redis
# lost its data). 1 renewed, 2 re-taken, 0 another process holds it.
_RENEW = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0
"""
# Delete the lease only if it is still ours (a graceful stop must not end a successor's lease).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass
class NodeInfo:
    """What `alive_nodes`/`nodes` report about one node."""

    node: str
    alive: bool
    role: str = ""
    host: str = ""
    pid: int | None = None
    version: str = ""
    started: float | None = None
    job: str = ""
    ttl_ms: int | None = None
    config: str = ""  # the config folder the process runs from (which federation's it is)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Heartbeat:
    """Register a node and keep its heartbeat key alive until `stop()` (or the process dies)."""

    def __init__(self, r: redis.Redis, keys, node_id: str, role: str, *, interval: float = DEFAULT_INTERVAL,
                 ttl_factor: int = TTL_FACTOR, key: str | None = None, info_key: str | None = None,
                 config_dir: str | os.PathLike | None = None, failover_s: float = 0.0) -> None:
        if interval <= 0:
            raise ValueError("heartbeat interval must be > 0")
        self.r = r
        self.keys = keys
        self.node_id = node_id
        self.role = role
        self.interval = float(interval)
        # the lease outlasts a Redis failover (`redis.failover_window`) plus the beat that renews it after
        # one: a failover must not look like dead nodes (a cluster one takes ~20 s, 3 beats are 6 s)
        self.ttl_ms = max(1, int(max(self.interval * ttl_factor, failover_s + 2 * self.interval) * 1000))
        self.key = key or keys.heartbeat(node_id)
        self.info_key = info_key or keys.node_info(node_id)
        self.info: dict[str, str] = {
            "node": node_id, "role": role, "host": socket.gethostname(), "pid": str(os.getpid()),
            "version": __version__, "started": repr(time.time()),
            "interval": repr(self.interval), "job": "", "config": os.fspath(config_dir) if config_dir else "",
        }
        # the lease value says who holds it (for the "already running" line) and is unique per process
        where = f", config folder {self.info['config']}" if self.info["config"] else ""
        self.token = f"pid {os.getpid()} on host {socket.gethostname()}{where} #{uuid.uuid4().hex[:16]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = False
        self.lost = threading.Event()   # set when another process holds our lease
        self.on_lost = None             # called once (from the beat thread) when the lease is lost
        self._renew = r.register_script(_RENEW)
        self._release = r.register_script(_RELEASE)

    def start(self, *, wait_s: float | None = None) -> Heartbeat:
        """Take the lease (waiting up to `wait_s`, default the TTL + 1 s, for a dead holder's key to
        expire), register, then beat in the background. XfedError naming the holder if it stays
        taken; BrokerError if Redis is down."""
        self.acquire(wait_s=wait_s)
        self.beat(register=True)
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.node_id}", daemon=True)
        self._thread.start()
        return self

    def set_job(self, job_id: str | None) -> None:
        """Advertise what this node is busy with (shown by `-c nodes`)."""
        self.info["job"] = job_id or ""
        try:
            self.r.hset(self.info_key, "job", self.info["job"])
        except redis.RedisError:
            pass  # the next beat re-registers the whole hash

    def acquire(self, *, wait_s: float | None = None) -> None:
        """One atomic `SET NX PX` of our token; retried while a previous holder's TTL runs out."""
        wait_s = self.ttl_ms / 1000 + 1.0 if wait_s is None else wait_s
        deadline = time.monotonic() + wait_s
        while True:
            try:
                if self.r.set(self.key, self.token, nx=True, px=self.ttl_ms):
                    return
                ttl, holder = self.r.pttl(self.key), self.r.get(self.key)
            except redis.RedisError as err:
                raise BrokerError(f"heartbeat of {self.node_id} ({self.key}): {type(err).__name__}: {err}") from err
            if time.monotonic() > deadline:
                who = _s(holder).split(" #")[0] or "?"
                raise XfedError(f"{self.node_id} is already running on namespace {self.keys.namespace!r} ({who}); "
                                "stop it first, or give this federation its own redis.namespace")
            time.sleep(min(0.2, max(0.01, (ttl if isinstance(ttl, int) and ttl > 0 else 50) / 1000)))

    def beat(self, *, register: bool = False) -> None:
        if self.lost.is_set():
            return
        try:
            rc = self._renew(keys=[self.key], args=[self.token, self.ttl_ms])
            if rc == 0:
                self._lose()
                return
            pipe = self.r.pipeline(transaction=False)
            if register or rc == 2:
                pipe.hset(self.info_key, mapping=self.info)
                pipe.sadd(self.keys.nodes(), self.node_id)
            else:
                # not EXISTS: after Redis lost its data, set_job may have re-created a partial hash
                pipe.hexists(self.info_key, "pid")
            res = pipe.execute()
            if not (register or rc == 2) and not res[0]:  # Redis restarted without our registration
                self.beat(register=True)
            self.connected = True
        except redis.RedisError as err:
            self.connected = False
            raise BrokerError(f"heartbeat of {self.node_id} ({self.key}): {type(err).__name__}: {err}") from err

    def _lose(self) -> None:
        """Another process with our id holds the lease: we were frozen past the TTL and replaced."""
        self.lost.set()
        self._stop.set()
        log.error("%s: another process took over this id's heartbeat lease (%s); this one must stop",
                  self.node_id, self.key)
        if self.on_lost is not None:
            try:
                self.on_lost()
            except Exception:  # noqa: BLE001 - a callback bug must not hide the loss
                log.exception("on_lost callback of %s failed", self.node_id)

    def _run(self) -> None:
        warned = False
        while not self._stop.wait(self.interval):
            try:
                self.beat()
                if warned:
                    log.warning("heartbeat of %s: Redis reachable again", self.node_id)
                warned = False
            except BrokerError as err:
                if not warned:
                    log.warning("%s (retrying)", err)
                warned = True
            except Exception:  # noqa: BLE001 - the thread must keep beating whatever happens
                log.exception("heartbeat of %s failed (retrying)", self.node_id)

    def stop(self, *, deregister: bool = True) -> None:
        """Stop beating; with deregister the node disappears at once instead of after the TTL."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 1)
        if deregister and not self.lost.is_set():
            try:
                if self._release(keys=[self.key], args=[self.token]):
                    self.r.hset(self.info_key, "job", "")
            except redis.RedisError:
                pass


def wait_until_free(r: redis.Redis, keys, node_id: str, *, interval: float, key: str | None = None) -> None:
    """Refuse to start a second `node_id` beside a live one; wait out the TTL of a dead one (kill -9).

    Raises XfedError naming where the live one runs when its heartbeat is still refreshed after
    3 intervals + 1 s. Only a check: `Heartbeat.start` takes the lease atomically."""
    key = key or keys.heartbeat(node_id)
    deadline = time.monotonic() + TTL_FACTOR * interval + 1.0
    while True:
        try:
            ttl = r.pttl(key)
        except redis.RedisError as err:
            raise BrokerError(f"reading {key}: {type(err).__name__}: {err}") from err
        if not (isinstance(ttl, int) and ttl > 0):
            return
        if time.monotonic() > deadline:
            info = node_infos(r, keys, [node_id])[node_id]
            where = f", config folder {info.config}" if info.config else ""
            raise XfedError(f"{node_id} is already running on namespace {keys.namespace!r} (pid {info.pid or '?'} "
                            f"on host {info.host or '?'}{where}); stop it first, or give this federation "
                            "its own redis.namespace")
        time.sleep(min(0.2, ttl / 1000))


def _s(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else ("" if v is None else str(v))


def node_infos(r: redis.Redis, keys, node_ids: list[str] | None = None) -> dict[str, NodeInfo]:
    """Registration + liveness of `node_ids` (default: every registered node)."""
    try:
        if node_ids is None:
            node_ids = sorted(_s(n) for n in r.smembers(keys.nodes()))
        pipe = r.pipeline(transaction=False)
        for n in node_ids:
            pipe.pttl(keys.heartbeat(n))
            pipe.hgetall(keys.node_info(n))
        res = pipe.execute()
    except redis.RedisError as err:
        raise BrokerError(f"reading node registry: {type(err).__name__}: {err}") from err
    out: dict[str, NodeInfo] = {}
    for i, n in enumerate(node_ids):
        ttl, info = res[2 * i], {_s(k): _s(v) for k, v in (res[2 * i + 1] or {}).items()}
        alive = isinstance(ttl, int) and ttl > 0
        pid = info.get("pid")
        try:
            started = float(info["started"]) if info.get("started") else None
        except ValueError:
            started = None
        out[n] = NodeInfo(node=n, alive=alive, role=info.get("role", ""), host=info.get("host", ""),
                          pid=int(pid) if pid and pid.isdigit() else None, version=info.get("version", ""),
                          started=started, job=info.get("job", ""), ttl_ms=ttl if alive else None,
                          config=info.get("config", ""))
    return out


def alive_nodes(r: redis.Redis, keys, node_ids: list[str] | None = None) -> set[str]:
    """The subset of `node_ids` (default: all registered) whose heartbeat key is alive."""
    return {n for n, info in node_infos(r, keys, node_ids).items() if info.alive}


def dump(infos: dict[str, NodeInfo]) -> str:
    return json.dumps({n: i.to_dict() for n, i in infos.items()})


def scheduler_alive(r: redis.Redis, keys) -> bool:
    """Whether the scheduler's heartbeat key is alive."""
    try:
        return (r.pttl(keys.scheduler()) or 0) > 0
    except redis.RedisError as err:
        raise BrokerError(f"reading the scheduler heartbeat: {type(err).__name__}: {err}") from err
