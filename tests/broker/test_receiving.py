"""Comm's read loop on a real redis-server: how many round trips messages that land together cost.

Redis 7.0 answers a blocked XREAD over several streams with the one stream that woke it; these tests
land several messages at once (one MULTI/EXEC) while the receiver is blocked and count its reads.
"""

import threading
import time

import numpy as np
import pytest

from xfed.broker.channels import Comm
from xfed.broker.connection import connect
from xfed.broker.frames import as_wire_array
from xfed.broker.keys import Keys
from xfed.errors import ChannelTimeout

pytestmark = pytest.mark.integration


@pytest.fixture
def r(redis_server):
    return connect(redis_server.address, retry_s=5)


def _comm(r, node, **kw):
    return Comm(r, Keys("t"), "5", 1, node, job_check_s=30.0, **kw)


def _count_pumps(comm):
    pumps = []
    orig = comm._pump

    def pump(*args, **kw):
        pumps.append(time.monotonic())
        return orig(*args, **kw)

    comm._pump = pump
    return pumps


def _wait_blocked(r, timeout=5.0):
    """Until some client of this server is blocked in a read (the receiver's pipelined XREAD)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any("b" in c["flags"] and c["cmd"] == "xread" for c in r.client_list()):
            return
        time.sleep(0.005)
    raise AssertionError("the receiver never blocked in XREAD")


def _in_background(fn):
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_uploads_that_land_together_are_read_in_one_round_trip(redis_server, r):
    """Three uploads appended in one transaction while the root waits: one read brings all three
    (a single XREAD over the three mailboxes would wake with one and need another round trip)."""
    root = _comm(connect(redis_server.address, retry_s=5), "root", poll_s=5.0)
    leaves = {n: _comm(r, n) for n in ("n1", "n2", "n3")}
    pumps = _count_pumps(root)
    t, out = _in_background(lambda: root.gather(list(leaves), "up", timeout=20))
    _wait_blocked(r)
    pipe = r.pipeline(transaction=True)
    for i, (node, leaf) in enumerate(leaves.items()):
        wire = {"x": as_wire_array("x", np.full(1000, i, dtype=np.uint64))}
        key, entries, _ = leaf._frame("root", "up", wire, {"from": node}, [])
        for fields in entries:
            pipe.xadd(key, fields)
    pipe.execute()
    t.join(20)
    assert "error" not in out, out.get("error")
    got = out["value"]
    assert {n: int(m.tensors["x"][0]) for n, m in got.items()} == {"n1": 0, "n2": 1, "n3": 2}
    assert len(pumps) == 1


def test_a_published_mean_arrives_with_its_header_in_one_round_trip(redis_server, r):
    """The header (in the mailbox) and the payload (on the sender's shared stream) are written in one
    transaction; a receiver that already knows the shared stream gets both from one read."""
    root = _comm(r, "root", chunk_bytes=4096)
    leaf = _comm(connect(redis_server.address, retry_s=5), "n1", poll_s=5.0)
    mean = np.random.default_rng(3).normal(size=5000).astype(np.float32)
    root.publish(["n1"], "down", {"mean": mean})
    assert np.array_equal(leaf.recv("root", "down", timeout=5).tensors["mean"], mean)  # learns the stream
    pumps = _count_pumps(leaf)
    t, out = _in_background(lambda: leaf.recv("root", "down", timeout=20))
    _wait_blocked(r)
    root.publish(["n1"], "down", {"mean": mean * 2})
    t.join(20)
    assert "error" not in out, out.get("error")
    assert np.array_equal(out["value"].tensors["mean"], mean * 2)
    assert len(pumps) == 1


def test_mailboxes_are_read_in_the_order_their_last_messages_arrived(r):
    """The read that blocks first is the mailbox whose sender was earliest last time, so the reads
    follow the senders' usual order instead of sitting behind a late one."""
    root = _comm(r, "root", poll_s=0.05)
    leaves = {n: _comm(r, n) for n in ("n1", "n2", "n3")}
    for node in ("n3", "n1", "n2"):  # this order of arrival, one read each
        leaves[node].send("root", "up", meta={"r": 0})
        root.recv(node, "up", timeout=5)
    order = []
    orig_pipeline = root.r.pipeline

    def pipeline(*a, **kw):
        pipe = orig_pipeline(*a, **kw)
        inner = pipe.xread

        def xread(streams, **kw2):
            order.extend(streams)
            return inner(streams, **kw2)

        pipe.xread = xread
        return pipe

    root.r.pipeline = pipeline
    with pytest.raises(ChannelTimeout, match="no 'up'"):
        root.gather(list(leaves), "up", timeout=0.01)
    keys = Keys("t")
    assert order[:3] == [keys.mailbox("5", 1, "root", n) for n in ("n3", "n1", "n2")]
