"""Riding out a restart or failover: transient errors retried for a time window, then a bounded failure."""
from __future__ import annotations

import threading
import time

import pytest
import redis
from redis.exceptions import BusyLoadingError, ClusterDownError, ReadOnlyError, TryAgainError

from xfed.broker.connection import connect
from xfed.broker.failover import FailoverRedis, is_transient


@pytest.mark.parametrize("exc, transient", [
    (redis.ConnectionError("Connection refused"), True), (redis.TimeoutError(), True),
    (ReadOnlyError("You can't write against a read only replica."), True),
    (ClusterDownError("CLUSTERDOWN The cluster is down"), True), (TryAgainError("TRYAGAIN"), True),
    (BusyLoadingError("LOADING Redis is loading the dataset in memory"), True),
    (redis.ResponseError("NOREPLICAS Not enough good replicas to write."), True),
    (redis.ResponseError("MASTERDOWN Link with MASTER is down"), True),
    (redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
    (redis.ResponseError("NOPERM this user has no permissions"), False),
    (redis.AuthenticationError("invalid username-password pair"), False),
])
def test_which_errors_a_failover_raises(exc, transient):
    assert is_transient(exc) is transient


def _restart_after(srv, seconds: float) -> threading.Thread:
    t = threading.Thread(target=lambda: (time.sleep(seconds), srv.start()))
    t.start()
    return t


def test_a_command_and_a_pipeline_wait_out_a_restart_within_the_window(redis_server):
    r = connect(redis_server.address, retry_s=5, failover_s=20)
    assert isinstance(r, FailoverRedis) and r.window_s == 20
    redis_server.stop()
    t = _restart_after(redis_server, 1.0)
    started = time.monotonic()
    assert r.set("k", "v") is True  # issued while the server was down
    pipe = r.pipeline(transaction=True)
    pipe.incr("n").incr("n")
    assert pipe.execute() == [1, 2]
    t.join()
    assert 0.9 < time.monotonic() - started < 15


def test_a_pipeline_queued_before_an_outage_is_replayed_whole(redis_server):
    r = connect(redis_server.address, retry_s=5, failover_s=20)
    pipe = r.pipeline(transaction=False)
    pipe.set("a", 1).rpush("l", "x").get("a")
    redis_server.stop()
    t = _restart_after(redis_server, 0.5)
    assert pipe.execute() == [True, 1, b"1"]
    t.join()
    assert r.lrange("l", 0, -1) == [b"x"]


def test_past_the_window_the_error_comes_back_bounded(redis_server):
    r = connect(redis_server.address, retry_s=2, failover_s=0)
    redis_server.stop()
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        r.get("k")
    assert 1.0 < time.monotonic() - started < 6  # about the window (2 s), not forever


def test_readonly_replica_is_retried_until_it_is_promoted(redis_factory):
    master = redis_factory(extra_args=["--repl-diskless-sync-delay", "0"])
    replica = redis_factory(extra_args=["--replicaof", master.host, str(master.port)])
    r = connect(replica.address, retry_s=1, failover_s=1.5)
    started = time.monotonic()
    with pytest.raises(ReadOnlyError):  # never promoted: READONLY after the window, no hang
        r.set("k", "v")
    assert 0.5 < time.monotonic() - started < 6  # about the window (it stops a backoff step early)
    admin, patient = replica.client(), connect(replica.address, retry_s=1, failover_s=20)
    threading.Timer(0.5, lambda: admin.execute_command("REPLICAOF", "NO", "ONE")).start()
    assert patient.set("k", "v") is True  # promoted within the window: the write goes through
