"""StopWatcher on a real redis-server: calls only read a flag; a job's state change wakes it at once."""

import time

import pytest

from xfed.broker.connection import connect
from xfed.broker.jobrecord import JobState
from xfed.broker.jobstore import JobStore
from xfed.broker.keys import Keys
from xfed.node.context import StopWatcher

pytestmark = pytest.mark.integration


def _until(fn, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return time.monotonic()
        time.sleep(0.01)
    return None


def _calls(r, cmd):
    return int(r.info("commandstats").get(f"cmdstat_{cmd}", {}).get("calls", 0))


def test_a_stop_wakes_the_watcher_at_once_and_calls_cost_no_round_trip(redis_server):
    r = connect(redis_server.address, retry_s=5)
    jobs = JobStore(r, Keys("w"))
    job = jobs.create(["node-1"])
    assert jobs.transition(job, JobState.RUNNING, stage=0, attempt=0)
    watcher = StopWatcher(jobs, job, 0, 0, poll_s=60)  # no periodic check within this test
    assert not watcher()
    time.sleep(0.2)  # the thread has read the state once and blocks on the signal stream
    reads = _calls(r, "hmget")
    for _ in range(1000):
        assert not watcher()
    assert _calls(r, "hmget") == reads
    t0 = time.monotonic()
    assert jobs.transition(job, JobState.STOPPED, reason="user")
    woke = _until(lambda: watcher())
    assert woke is not None and woke - t0 < 1.0
    assert watcher.reason == "job is STOPPED"


def test_a_state_written_without_a_signal_is_still_seen_on_the_periodic_check(redis_server):
    r = connect(redis_server.address, retry_s=5)
    keys = Keys("w")
    jobs = JobStore(r, keys)
    job = jobs.create(["node-1"])
    assert jobs.transition(job, JobState.RUNNING, stage=0, attempt=0)
    watcher = StopWatcher(jobs, job, 0, 0, poll_s=0.3)
    assert not watcher()
    r.hset(keys.job(job), "stage", "1")  # e.g. an older scheduler that writes no signal
    assert _until(lambda: watcher(), timeout=3) is not None
    assert watcher.reason == "job moved to stage 1"
    watcher.close()
