"""The shared redis_server fixture: starts, answers, restarts with its data, stops by pid."""

import os

import pytest


@pytest.mark.integration
def test_redis_server_fixture_restart_keeps_data_and_stop_kills_pid(redis_server):
    c = redis_server.client()
    c.set("k", b"v")
    old_pid = redis_server.pid
    redis_server.restart(keep_data=True)
    assert redis_server.pid != old_pid
    c2 = redis_server.client()
    assert c2.get("k") == b"v"
    assert c2.config_get("save")["save"] == ""
    redis_server.restart(keep_data=False)
    assert redis_server.client().get("k") is None
    pid = redis_server.pid
    redis_server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
