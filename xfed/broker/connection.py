"""Connecting to the federation's Redis: a client that rides out restarts and failovers, for a parsed
address (one server, a Sentinel-managed master or a Redis Cluster).

The address is parsed by config (`xfed.config.redis_address`, `FedConf.redis_address`); an
``"embedded"`` one is started or joined through `xfed.broker.embedded`.
"""

from __future__ import annotations

import os

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from xfed.broker.embedded import EmbeddedRedis, default_embedded_dir
from xfed.broker.failover import FailoverRedis, cluster_client, connection_retry, sentinel_client
from xfed.broker.retry import retry_until_deadline
from xfed.config.fed_conf import FedConf
from xfed.config.redis_address import RedisAddress
from xfed.errors import BrokerError

SOCKET_TIMEOUT_S = 60.0  # large frames (hundreds of MB) must not trip it; blocking reads use short blocks
DEFAULT_CONNECT_TIMEOUT_S = 10.0  # RedisOptions.connect_timeout's default, for a bare address


def connect(target: FedConf | RedisAddress | str, *, retry_s: float | None = None,
            embedded_dir: str | os.PathLike | None = None, client_name: str | None = None,
            failover_s: float | None = None) -> redis.Redis:
    """A client (bytes in/out) for a FedConf (its `redis_address`), an address or an address string:
    `redis.Redis` for one server, the Sentinel-managed master for redis+sentinel://, a
    `FailoverCluster` (a RedisCluster) for redis+cluster://.

    Waits up to `retry_s` (default: the FedConf's `redis.connect_timeout`, else 10 s) for the first
    PING, then raises BrokerError naming the address. Afterwards every command is retried through
    transient errors (connection lost, READONLY, CLUSTERDOWN, TRYAGAIN, LOADING: xfed.broker.failover)
    for `failover_s` (default: the FedConf's `failover_window_s`) or `retry_s` seconds, whichever is
    longer, so a Redis restart or failover does not break a daemon and nothing retries forever.
    """
    if isinstance(target, FedConf):
        address = target.redis_address
        retry_s = target.redis.connect_timeout if retry_s is None else retry_s
        failover_s = target.failover_window_s if failover_s is None else failover_s
        if address.embedded and embedded_dir is None:
            embedded_dir = default_embedded_dir(target)
    elif isinstance(target, RedisAddress):
        address = target
    else:
        address = RedisAddress.parse(target)
    if retry_s is None:
        retry_s = DEFAULT_CONNECT_TIMEOUT_S
    window_s = max(retry_s, failover_s or 0.0)
    embedded = None
    if address.embedded:
        if embedded_dir is None:
            raise BrokerError("an embedded Redis needs its work folder (connect a FedConf or pass embedded_dir)")
        embedded = EmbeddedRedis(embedded_dir)
        address = embedded.join()
    common = dict(decode_responses=False, socket_timeout=SOCKET_TIMEOUT_S,
                  socket_connect_timeout=min(5.0, max(retry_s, 0.5)), client_name=client_name)
    if address.kind == "cluster":
        return _connect_cluster(address, common, retry_s, window_s)
    # the first contact is probed without redis-py's own retries, so the deadline is ours and a
    # non-transient failure (TLS, credentials) is reported at once
    if address.kind == "sentinel":
        probe = sentinel_client(address, common, 0.0)
    else:
        probe = redis.Redis(**address.client_kwargs(), **common, retry=Retry(NoBackoff(), 0))
    try:
        wait_until_reachable(probe, address, retry_s)
    finally:
        probe.close()
    if address.kind == "sentinel":
        client = sentinel_client(address, {**common, "health_check_interval": 15}, window_s)
    else:
        client = FailoverRedis(**address.client_kwargs(), **common, health_check_interval=15,
                               retry=connection_retry())
        client.window_s = window_s
    if embedded is not None:
        client.xfed_embedded = embedded  # keeps the membership alive as long as the client
    return client


def _connect_cluster(address: RedisAddress, common: dict, retry_s: float, window_s: float) -> redis.Redis:
    """A FailoverCluster once one start-up node answers with the cluster's slot map (within `retry_s`)."""
    made: list = []

    def attempt() -> None:
        try:
            client = cluster_client(address, common, window_s)
        except RedisClusterException as exc:
            text = str(exc)
            if "Cluster mode is not enabled" in text:
                raise BrokerError(f"Redis at {address.display()}: the server answers but not as a cluster node "
                                  "(cluster-enabled no), or the ACL user may not run CLUSTER SLOTS/SHARDS/NODES "
                                  "(scripts/redis_acl.py grants them)") from None
            if "NOPERM" in text or "WRONGPASS" in text or "NOAUTH" in text or "invalid username" in text:
                raise BrokerError(f"Redis at {address.display()} refused the credentials: {text[:200]}") from None
            raise redis.ConnectionError(text.splitlines()[0][:300]) from None
        made.append(client)  # constructing it read the slot map from a node: it is reachable

    def unreachable(exc: BaseException) -> BrokerError:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return BrokerError(f"cannot reach Redis at {address.display()} (tried for {retry_s:g} s): {reason}")

    retry_until_deadline(attempt, seconds=retry_s, transient=(redis.ConnectionError, redis.TimeoutError, OSError),
                         give_up=unreachable, first_delay=0.05, max_delay=1.0)
    return made[-1]


def wait_until_reachable(client: redis.Redis, address: RedisAddress, retry_s: float) -> None:
    """PING until it answers or `retry_s` passes; BrokerError naming the address otherwise."""

    def ping() -> None:
        try:
            client.ping()
        except redis.AuthenticationError as exc:
            raise BrokerError(f"Redis at {address.display()} refused the credentials: {exc}") from None
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc) or "NOPERM" in str(exc):
                raise BrokerError(f"Redis at {address.display()} refused the credentials: {exc}") from None
            raise BrokerError(f"Redis at {address.display()}: {exc}") from None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc) or "WRONG_VERSION_NUMBER" in str(exc):
                # not transient: a CA / TLS mismatch will not fix itself by retrying
                raise BrokerError(f"TLS handshake with Redis at {address.display()} failed: "
                                  f"{str(exc).splitlines()[0][:200]}") from None
            raise

    def unreachable(exc: BaseException) -> BrokerError:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return BrokerError(f"cannot reach Redis at {address.display()} (tried for {retry_s:g} s): {reason}")

    retry_until_deadline(ping, seconds=retry_s, transient=(redis.ConnectionError, redis.TimeoutError, OSError),
                         give_up=unreachable, first_delay=0.05, max_delay=1.0)
