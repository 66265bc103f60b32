"""`--follow` rides out a Redis restart the daemons ride out (issue 13): real redis-server, restarted."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from rich.console import Console

from tests.conftest import RedisServer
from xfed.broker.jobrecord import JobState
from xfed.broker.jobstore import JobStore
from xfed.broker.keys import Keys
from xfed.client import Client

pytestmark = pytest.mark.integration


def test_follow_waits_out_a_redis_restart_and_reports_the_outcome(tmp_path, capsys):
    srv = RedisServer(dir=tmp_path)
    srv.start()
    try:
        keys = Keys("fo")
        # no client-library retries: the outage reaches the follower at once, however short it is
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = Client(SimpleNamespace(node_ids=["n1"], heartbeat_interval=0.5, failover_window_s=0.0),
                        srv.client(retry=Retry(NoBackoff(), 0), retry_on_timeout=False), keys,
                        console=Console(record=True))
        job = client.jobs.create(["n1"])
        client.jobs.transition(job, JobState.RUNNING, stage=0)
        outcome = {}
        follower = threading.Thread(target=lambda: outcome.setdefault("rc", client.follow(job)), daemon=True)
        follower.start()
        time.sleep(0.5)
        srv.stop(save=True)  # the data comes back with the server
        time.sleep(1.0)
        srv.start()
        JobStore(srv.client(), keys).transition(job, JobState.SUCCESSFUL)
        follower.join(30)
        out = capsys.readouterr().out
        assert outcome.get("rc") == 0, out
        assert "Redis unreachable" in out and "Redis reachable again" in out and f"job {job} SUCCESSFUL" in out
    finally:
        srv.stop()
