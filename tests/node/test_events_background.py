"""A stage's EventReporter in background mode: reports are queued, sent pipelined, kept in order."""

import threading

import pytest

from xfed.broker.connection import connect
from xfed.broker.keys import Keys
from xfed.broker.streams import ControlStream
from xfed.node.events import EventReporter

pytestmark = pytest.mark.integration


def test_reports_do_not_wait_on_redis_and_an_outcome_comes_after_them(redis_server):
    r = connect(redis_server.address, retry_s=5)
    keys = Keys("ev")
    r.hset(keys.job("7"), "state", "RUNNING")
    rep = EventReporter(r, keys, "7", "node-1", 0, 0, background=True)
    gate = threading.Event()
    sent: list[int] = []
    add_many = rep.stream.add_many

    def slow_add_many(msgs):  # Redis far away: the sender thread waits, the caller must not
        gate.wait(5)
        sent.append(len(msgs))
        add_many(msgs)

    rep.stream.add_many = slow_add_many
    for i in range(5):
        rep.report("progress", {"step": i})
    assert r.xlen(keys.job_events("7")) == 0  # nothing sent yet, and report() returned
    gate.set()
    rep.done(1, {"ok": True})
    entries = ControlStream(r, keys.job_events("7")).read()
    assert [e.msg["type"] for e in entries] == ["progress"] * 5 + ["done"]
    assert [e.msg["data"]["step"] for e in entries[:5]] == list(range(5))
    assert sum(sent) == 5 and len(sent) <= 2  # pipelined: the first alone, the rest queued behind it


def test_an_invalid_report_is_dropped_without_losing_the_others(redis_server):
    r = connect(redis_server.address, retry_s=5)
    keys = Keys("ev")
    r.hset(keys.job("8"), "state", "RUNNING")
    rep = EventReporter(r, keys, "8", "node-1", 0, 0, background=True)
    rep.report("log", {"message": "x" * (1 << 20)})  # over the control message size limit
    rep.report("log", {"message": "fine"})
    assert rep.flush(5)
    entries = ControlStream(r, keys.job_events("8")).read()
    assert [e.msg["data"]["message"] for e in entries] == ["fine"]
