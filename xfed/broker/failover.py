"""Riding out a Redis failover: which errors are transient, and clients that retry them for a window.

During a failover a command may meet: a closed connection or a refused one (the old master died),
`READONLY` (it talks to a demoted master: a Sentinel split brain), `CLUSTERDOWN` / `TRYAGAIN` /
`MOVED` / `ASK` (a cluster shard changes hands), `LOADING` (a restarted server reads its AOF),
`MASTERDOWN` / `NOREPLICAS` (a replica lost its master; `min-replicas-to-write` not met). All of
them pass within the failover; each command is retried through them for a time window
(`redis.failover_window`, at least `connect_timeout`), not for a count, so a 19 s cluster failover
and a 2 s restart are both ridden out and nothing waits forever.

- one server and Sentinel: `FailoverRedis` wraps each command and pipeline in the window; a
  connection itself retries once (a Sentinel-managed one asks the sentinels for the master at each
  connect, and turns `READONLY` into a reconnect).
- Redis Cluster: redis-py follows MOVED/ASK and refreshes the slot map itself but retries a
  failover only a few times without sleeping, so `FailoverCluster` wraps each command and each
  pipeline in the same deadline (a pipeline is replayed whole; every xfed pipeline is idempotent
  or, for mailbox XADDs, de-duplicated by the receiver's sequence numbers).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, TypeVar

import redis
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.client import Pipeline
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    ReadOnlyError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.retry import Retry

from xfed.config.redis_address import RedisAddress

log = logging.getLogger(__name__)
T = TypeVar("T")

# exception classes a failover raises (BusyLoadingError and MasterNotFoundError are ConnectionErrors;
# MasterDownError is a ClusterDownError)
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError, redis.TimeoutError, ConnectionResetError, ReadOnlyError, BusyLoadingError,
    ClusterDownError, TryAgainError, SlotNotCoveredError,
)
# plain ResponseErrors that mean "not now" rather than "never"
_TRANSIENT_REPLIES = ("NOREPLICAS", "MASTERDOWN", "LOADING", "READONLY", "CLUSTERDOWN", "TRYAGAIN")
BACKOFF_CAP_S = 1.0


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is what a Redis restart or failover raises (retry it), not a refusal."""
    if isinstance(exc, redis.AuthenticationError):  # a ConnectionError in redis-py, but no failover fixes it
        return False
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    if isinstance(exc, RedisClusterException) and "cannot be connected" in str(exc):
        return True  # every start-up node unreachable (the whole cluster restarting)
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(_TRANSIENT_REPLIES)


def backoff() -> EqualJitterBackoff:
    """Sleeps 0.05, 0.1, ... doubling up to BACKOFF_CAP_S (at least half of each, so the window is kept)."""
    return EqualJitterBackoff(cap=BACKOFF_CAP_S, base=0.05)


def connection_retry() -> Retry:
    """What each connection retries by itself: once, quickly. The window is kept one level up (per
    command), so that a retry after a failover asks the sentinels again where the master is: a
    connection retrying its own connect for the whole window would keep the address it was given
    and could end up on the old master, restarted empty (a split brain)."""
    return Retry(backoff(), 1)


def retry_window(fn: Callable[[], T], window_s: float, what: str = "") -> T:
    """Call `fn`, retrying transient errors (sleeping with `backoff()`) for `window_s` seconds."""
    deadline = time.monotonic() + window_s
    policy, failures = backoff(), 0
    while True:
        try:
            return fn()
        except (redis.RedisError, ConnectionResetError) as error:
            if not is_transient(error):
                raise
            failures += 1
            delay = policy.compute(failures)
            if time.monotonic() + delay > deadline:
                raise
            if failures == 1:
                log.info("Redis %s: %s: %s (retrying for up to %g s)", what, type(error).__name__, error, window_s)
            time.sleep(delay)


class FailoverRedis(redis.Redis):
    """redis.Redis (one server or a Sentinel-managed master) whose commands and pipelines are
    retried through transient errors for `window_s`."""

    window_s: float = 30.0

    def execute_command(self, *args, **options):
        return retry_window(lambda: super(FailoverRedis, self).execute_command(*args, **options),
                            self.window_s, str(args[0]) if args else "")

    def pipeline(self, transaction=True, shard_hint=None):
        pipe = FailoverPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.window_s = self.window_s
        return pipe


class FailoverPipeline(Pipeline):
    """A pipeline (or MULTI/EXEC transaction) replayed whole on a transient error, for `window_s`."""

    window_s: float = 30.0

    def execute(self, raise_on_error: bool = True):
        stack = list(self.command_stack)

        def attempt():
            self.command_stack = list(stack)  # Pipeline.execute empties it, failed or not
            return Pipeline.execute(self, raise_on_error)

        return retry_window(attempt, self.window_s, "pipeline")


class FailoverCluster(RedisCluster):
    """RedisCluster whose commands and pipelines are retried through a failover for `window_s`."""

    window_s: float = 30.0

    def execute_command(self, *args, **kwargs):
        return retry_window(lambda: super(FailoverCluster, self).execute_command(*args, **kwargs),
                            self.window_s, str(args[0]) if args else "")

    def pipeline(self, transaction=None, shard_hint=None):
        pipe = super().pipeline(transaction=transaction, shard_hint=shard_hint)
        pipe.__class__ = FailoverClusterPipeline  # same state; execute() replays the queued commands
        pipe.window_s = self.window_s
        pipe.queued = []
        return pipe


class FailoverClusterPipeline(ClusterPipeline):
    """A cluster pipeline that, on a transient error, replays its whole queue until `window_s` passes."""

    window_s: float = 30.0
    queued: list

    def execute_command(self, *args, **kwargs):
        self.queued.append((args, kwargs))
        return super().execute_command(*args, **kwargs)

    def execute(self, raise_on_error: bool = True):
        queued, first = list(self.queued), [True]
        self.queued = []

        def attempt():
            if not first[0]:  # ClusterPipeline.execute emptied the queue: put the commands back
                for args, kwargs in queued:
                    ClusterPipeline.execute_command(self, *args, **kwargs)
            first[0] = False
            return ClusterPipeline.execute(self, raise_on_error)

        return retry_window(attempt, self.window_s, "pipeline")

    def reset(self):
        self.queued = []
        super().reset()


def cluster_client(address: RedisAddress, common: dict[str, Any], window_s: float) -> FailoverCluster:
    """A FailoverCluster over the address's start-up nodes (one reachable node is enough)."""
    client = FailoverCluster(startup_nodes=[ClusterNode(h, p) for h, p in address.nodes],
                             retry=Retry(NoBackoff(), 3), require_full_coverage=True,
                             **address.client_kwargs(), **common)
    client.window_s = float(window_s)
    return client


def sentinel_client(address: RedisAddress, common: dict[str, Any], window_s: float) -> FailoverRedis:
    """The master the sentinels name for `address.master_name`, asked again at every reconnect."""
    from redis.sentinel import Sentinel

    sentinel_kwargs = dict(username=address.sentinel_username, password=address.sentinel_password,
                           socket_timeout=common.get("socket_connect_timeout", 5.0),
                           socket_connect_timeout=common.get("socket_connect_timeout", 5.0), **address.tls_kwargs())
    sentinel = Sentinel(address.nodes, sentinel_kwargs=sentinel_kwargs, **address.client_kwargs())
    client = sentinel.master_for(address.master_name, redis_class=FailoverRedis, **common,
                                 retry=connection_retry() if window_s else Retry(NoBackoff(), 0))
    client.window_s = float(window_s)
    return client
