"""Heartbeats: registration, expiry after the TTL when beats stop, re-registration after data loss."""
from __future__ import annotations

import time

import pytest

from xfed.broker.heartbeat import Heartbeat, alive_nodes, node_infos
from xfed.broker.keys import Keys


@pytest.mark.integration
def test_dead_node_disappears_after_three_intervals(redis_server):
    r = redis_server.client()
    keys = Keys("hb")
    hb = Heartbeat(r, keys, "n1", "label_trainer", interval=0.2).start()
    try:
        info = node_infos(r, keys, ["n1", "n2"])
        assert info["n1"].alive and info["n1"].role == "label_trainer" and info["n1"].pid > 0
        assert not info["n2"].alive
        assert alive_nodes(r, keys) == {"n1"}
        time.sleep(0.7)  # beats keep it alive past one TTL
        assert alive_nodes(r, keys, ["n1"]) == {"n1"}
        r.flushall()  # data lost: the next beat registers again
        hb.set_job("4")  # ... even when the daemon wrote to its info hash first
        time.sleep(0.5)
        assert node_infos(r, keys, ["n1"])["n1"].role == "label_trainer"
        assert node_infos(r, keys, ["n1"])["n1"].pid > 0
        hb.set_job("5")
        assert node_infos(r, keys, ["n1"])["n1"].job == "5"
    finally:
        hb.stop(deregister=False)
    t0 = time.monotonic()
    while alive_nodes(r, keys, ["n1"]):
        time.sleep(0.02)
        assert time.monotonic() - t0 < 1.0
    assert time.monotonic() - t0 <= 0.6 + 0.05  # TTL = 3 intervals


@pytest.mark.integration
def test_graceful_stop_deregisters_at_once(redis_server):
    r = redis_server.client()
    keys = Keys("hb2")
    hb = Heartbeat(r, keys, "n1", "assist_trainer", interval=5).start()
    hb.stop()
    assert alive_nodes(r, keys, ["n1"]) == set()


@pytest.mark.integration
def test_a_second_daemon_with_the_same_id_is_refused_but_a_dead_ones_ttl_is_waited_out(redis_server):
    from xfed.broker.heartbeat import wait_until_free
    from xfed.errors import XfedError

    r = redis_server.client()
    keys = Keys("hb3")
    hb = Heartbeat(r, keys, "n1", "label_trainer", interval=0.1, config_dir="/srv/fed-a/config").start()
    with pytest.raises(XfedError, match=r"n1 is already running on namespace 'hb3' \(pid \d+ on host .*, "
                                        r"config folder /srv/fed-a/config\)") as err:
        wait_until_free(r, keys, "n1", interval=0.1)
    assert "\n" not in str(err.value)
    hb.stop(deregister=False)  # like kill -9: the key lingers for up to 3 intervals
    t0 = time.monotonic()
    wait_until_free(r, keys, "n1", interval=0.1)
    assert time.monotonic() - t0 < 0.5


@pytest.mark.integration
def test_two_processes_racing_for_one_id_cannot_both_hold_the_lease(redis_server):
    import threading

    from xfed.errors import XfedError

    r = redis_server.client()
    keys = Keys("hb4")
    twins = [Heartbeat(redis_server.client(), keys, "n1", "label_trainer", interval=0.1) for _ in range(2)]
    barrier, outcome = threading.Barrier(2), {}

    def race(i):
        barrier.wait()
        try:
            twins[i].start(wait_s=0.5)
            outcome[i] = "running"
        except XfedError as err:
            outcome[i] = str(err)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert sorted(outcome.values())[1] == "running", outcome
        refused = sorted(outcome.values())[0]
        assert refused.startswith("n1 is already running on namespace 'hb4' (pid ") and "stop it first" in refused
        winner = twins[[i for i, v in outcome.items() if v == "running"][0]]
        assert r.get(keys.heartbeat("n1")).decode() == winner.token
        assert node_infos(r, keys, ["n1"])["n1"].pid > 0
    finally:
        for hb in twins:
            hb.stop()


@pytest.mark.integration
def test_a_lease_taken_over_is_noticed_and_not_renewed_or_deleted(redis_server):
    r = redis_server.client()
    keys = Keys("hb5")
    hb = Heartbeat(r, keys, "n1", "label_trainer", interval=0.1)
    lost = []
    hb.on_lost = lambda: lost.append(True)
    hb.start()
    r.set(keys.heartbeat("n1"), "pid 1 on host elsewhere #x", px=5000)  # a successor's lease
    deadline = time.monotonic() + 2
    while not lost:
        assert time.monotonic() < deadline, "the heartbeat never noticed its lease was taken"
        time.sleep(0.02)
    assert hb.lost.is_set()
    hb.stop()  # must not delete the successor's key
    assert r.get(keys.heartbeat("n1")) == b"pid 1 on host elsewhere #x"
    assert 3000 < r.pttl(keys.heartbeat("n1")) <= 5000  # and never renewed it


def test_the_lease_outlasts_the_failover_window(redis_server):
    r, keys = redis_server.client(), Keys("hbfo")
    assert Heartbeat(r, keys, "n", "label_trainer", interval=0.5).ttl_ms == 1500  # one server: 3 beats
    hb = Heartbeat(r, keys, "n", "label_trainer", interval=0.5, failover_s=10).start()
    try:
        assert hb.ttl_ms == 11_000  # window + 2 beats
        assert 8_000 < r.pttl(keys.heartbeat("n")) <= 11_000  # (a loaded machine may take a while)
    finally:
        hb.stop()
