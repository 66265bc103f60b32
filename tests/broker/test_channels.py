"""Comm on a real redis-server: order, tags, chunking, gather timeouts, deletion, expiry, aborts, ACLs."""

import threading
import time

import numpy as np
import pytest

from xfed.broker.channels import Comm, expire_job_keys
from xfed.broker.connection import connect
from xfed.broker.frames import MAGIC
from xfed.broker.keys import Keys
from xfed.errors import BrokerError, ChannelTimeout, FrameError, JobError

pytestmark = pytest.mark.integration


@pytest.fixture
def r(redis_server):
    return connect(redis_server.address, retry_s=5)


def _comm(r, node, keys=None, **kw):
    return Comm(r, keys or Keys("t"), "5", 1, node, poll_s=0.05, job_check_s=0.1, **kw)


def test_messages_arrive_in_order_and_tags_wait_for_their_reader(r):
    a, b = _comm(r, "a"), _comm(r, "b")
    for i in range(4):
        a.send("b", "x" if i % 2 == 0 else "y", {"v": np.full(3, i, dtype=np.int64)}, {"i": i})
    assert [b.recv("a", "y", timeout=2).meta["i"] for _ in range(2)] == [1, 3]
    got = [b.recv("a", "x", timeout=2) for _ in range(2)]
    assert [m.meta["i"] for m in got] == [0, 2]
    assert [m.seq for m in got] == [0, 2]
    assert np.array_equal(got[1].tensors["v"], [2, 2, 2])


def test_chunked_payload_round_trips_and_consumed_entries_are_deleted(r):
    keys = Keys("t")
    a, b = _comm(r, "a", chunk_bytes=4096), _comm(r, "b")
    x = np.random.default_rng(1).integers(0, 2**64, size=50_000, dtype=np.uint64)
    sent = a.send("b", "big", {"x": x, "s": np.float32(1.5)})
    box = keys.mailbox("5", 1, "b", "a")
    head = r.xrange(box, count=1)[0][1][b"d"]  # a large message's frame header comes alone, first
    assert len(head) < 1024 and head.startswith(MAGIC)
    assert r.xlen(box) == 1 + -(-(sent - len(head)) // 4096) > 2
    assert 0 < r.ttl(box) <= 7 * 24 * 3600
    m = b.recv("a", "big", timeout=5)
    assert np.array_equal(m.tensors["x"], x) and m.tensors["s"] == np.float32(1.5)
    assert m.tensors["x"].flags.writeable
    assert b.stats.bytes_received == sent == a.stats.bytes_sent
    assert r.xlen(box) > 0  # consumed entries go with b's next command (no round trip of their own) ...
    b.send("a", "ack")
    assert r.xlen(box) == 0
    a.send("b", "more", {"x": x[:10]})
    b.recv("a", "more", timeout=5)
    b.flush()  # ... or now
    assert r.xlen(box) == 0


def test_gather_and_broadcast_between_several_nodes(r):
    root = _comm(r, "root")
    leaves = {n: _comm(r, n) for n in ("n1", "n2", "n3")}
    for n, c in leaves.items():
        c.send("root", "up", {"w": np.array([int(n[1])], dtype=np.float64)})
    got = root.gather(list(leaves), "up", timeout=3)
    assert sorted(float(m.tensors["w"][0]) for m in got.values()) == [1.0, 2.0, 3.0]
    root.broadcast(list(leaves), "down", {"avg": np.array([2.0])}, {"round": 0})
    for c in leaves.values():
        assert c.recv("root", "down", timeout=3).meta == {"round": 0}


def test_gather_timeout_names_the_nodes_that_did_not_answer(r):
    root = _comm(r, "root")
    _comm(r, "n1").send("root", "up", meta={"ok": 1})
    t0 = time.monotonic()
    with pytest.raises(ChannelTimeout, match=r"no 'up' from n2, n3 after 0.4 s"):
        root.gather(["n1", "n2", "n3"], "up", timeout=0.4)
    assert time.monotonic() - t0 < 2


def test_wait_aborts_when_should_stop_or_job_failed(r):
    stop = threading.Event()
    c = _comm(r, "b", should_stop=stop.is_set)
    threading.Timer(0.2, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(JobError, match="stopped while node b waited"):
        c.recv("a", "x", timeout=30)
    assert time.monotonic() - t0 < 2
    r.hset(Keys("t").job("5"), mapping={"state": "FAILED", "reason": "node-3 died"})
    with pytest.raises(JobError, match="FAILED: node-3 died"):
        _comm(r, "b").recv("a", "x", timeout=30)


def test_injected_garbage_is_a_frame_error_naming_the_sender(r):
    keys = Keys("t")
    r.xadd(keys.mailbox("5", 1, "b", "evil"), {b"q": b"0", b"i": b"0", b"n": b"1", b"z": b"4", b"d": b"junk"})
    with pytest.raises(FrameError, match="from evil.*not an xfed frame"):
        _comm(r, "b").recv("evil", "x", timeout=2)
    r.xadd(keys.mailbox("5", 1, "c", "evil"), {b"pickle": b"\x80\x04"})
    with pytest.raises(FrameError, match="malformed mailbox entry"):
        _comm(r, "c").recv("evil", "x", timeout=2)
    r.xadd(keys.mailbox("5", 1, "d", "evil"), {b"q": b"0", b"i": b"0", b"n": b"1", b"z": b"99999999999",
                                               b"d": b""})
    with pytest.raises(FrameError, match="out of range"):
        _comm(r, "d", max_frame_bytes=1 << 20).recv("evil", "x", timeout=2)


def test_forged_header_and_duplicates(r):
    keys = Keys("t")
    a = _comm(r, "a")
    a.send("b", "x", meta={"n": 1})
    entries = r.xrange(keys.mailbox("5", 1, "b", "a"))
    r.xadd(keys.mailbox("5", 1, "b", "a"), entries[0][1])  # a retried send leaves a duplicate
    a.send("b", "x", meta={"n": 2})
    b = _comm(r, "b")
    assert [b.recv("a", "x", timeout=2).meta["n"] for _ in range(2)] == [1, 2]
    # a frame written by "a" but dropped into c's mailbox from "z" is refused as misrouted
    r.xadd(keys.mailbox("5", 1, "c", "z"), entries[0][1])
    with pytest.raises(FrameError, match="misrouted or forged"):
        _comm(r, "c").recv("z", "x", timeout=2)


def test_expire_job_keys_sets_a_ttl_on_everything_of_the_job(r):
    keys = Keys("t")
    r.hset(keys.job("5"), "state", "SUCCESSFUL")
    _comm(r, "a").send("b", "x", meta={})
    r.set(keys.job("6"), b"other job")
    assert expire_job_keys(r, keys, "5", 60) == 2
    assert 0 < r.ttl(keys.job("5")) <= 60 and r.ttl(keys.job("6")) == -1


def test_recv_survives_a_redis_restart(redis_server, r):
    b = _comm(r, "b")
    result = {}

    def wait():
        result["m"] = b.recv("a", "x", timeout=20)

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.2)
    redis_server.restart(keep_data=False)
    _comm(connect(redis_server.address, retry_s=5), "a").send("b", "x", meta={"after": True})
    t.join(20)
    assert result["m"].meta == {"after": True}


def test_acl_user_reads_only_its_own_mailboxes(redis_server, r):
    keys = Keys("t")
    for node in ("n1", "n2"):
        r.execute_command("ACL", "SETUSER", node, "on", f">{node}pw", "resetkeys", *keys.node_acl_selectors(node),
                          "+@all")
    n1 = connect(f"redis://n1:n1pw@{redis_server.address}/0", retry_s=2)
    n2 = connect(f"redis://n2:n2pw@{redis_server.address}/0", retry_s=2)
    _comm(n1, "n1", keys).send("n2", "x", {"w": np.ones(2)})
    assert _comm(n2, "n2", keys).recv("n1", "x", timeout=2).tensors["w"].sum() == 2
    _comm(n2, "n2", keys).send("n1", "x", meta={})
    import redis

    with pytest.raises(redis.exceptions.NoPermissionError):
        n1.xrange(keys.mailbox("5", 1, "n2", "n1"))  # n2's inbox: n1 may write, not read
    with pytest.raises(redis.exceptions.NoPermissionError):
        n1.xadd(keys.mailbox("5", 1, "n2", "n3"), {b"d": b"x"})  # cannot write as n3
    # a published payload: written once by its sender, read by the others, written by no one else
    Comm(n1, keys, "6", 1, "n1").publish(["n2"], "mean", {"w": np.full(3, 2.0)})
    assert Comm(n2, keys, "6", 1, "n2", poll_s=0.05).recv("n1", "mean", timeout=2).tensors["w"].sum() == 6
    with pytest.raises(redis.exceptions.NoPermissionError):
        n2.xadd(keys.shared("6", 1, "n1"), {b"u": b"1", b"d": b"x"})


def test_send_rides_out_a_short_redis_outage(redis_server, r):
    a, b = _comm(r, "a", send_retry_s=30), _comm(r, "b")
    redis_server.stop()
    threading.Timer(1.0, redis_server.start).start()
    t0 = time.monotonic()
    a.send("b", "x", {"w": np.arange(3)})
    assert 0.5 < time.monotonic() - t0 < 25
    assert b.recv("a", "x", timeout=5).tensors["w"].tolist() == [0, 1, 2]


def test_send_gives_up_with_a_broker_error_when_redis_stays_down(redis_server):
    a = _comm(connect(redis_server.address, retry_s=0.5), "a", send_retry_s=0.5)
    redis_server.stop()
    with pytest.raises(BrokerError, match="could not send 'x' to b"):
        a.send("b", "x", meta={})


def test_a_restarted_peer_gets_fresh_mailboxes_with_sequence_numbers_from_zero(r):
    """node-b dies after messages both ways; its new incarnation talks to node-a on new mailboxes
    (what the old one left unread is not delivered, and nothing is taken for a duplicate)."""
    a, b = _comm(r, "node-a"), _comm(r, "node-b")
    for i in range(3):
        a.send("node-b", "x", meta={"i": i})
        b.send("node-a", "x", meta={"i": i})
    assert a.recv("node-b", "x").meta == {"i": 0}
    b2 = _comm(r, "node-b", incarnation=1)
    a.set_incarnation("node-b", 1)
    b2.send("node-a", "y", meta={"from": "b2"})
    a.send("node-b", "y", meta={"to": "b2"})
    assert a.recv("node-b", "y").meta == {"from": "b2"}
    assert b2.recv("node-a", "y").meta == {"to": "b2"}
    assert not a._inbox("node-b").pending["x"]  # the dead incarnation's unread messages are gone
    with pytest.raises(ChannelTimeout):
        b2.recv("node-a", "x", timeout=0.2)


def _calls(r, cmd: str) -> int:
    return int(r.info("commandstats").get(f"cmdstat_{cmd}", {}).get("calls", 0))


def test_receiver_sizes_its_reads_from_the_sender_s_chunks_and_pipelines_its_deletes(r):
    """A message cut in 1 KiB chunks reaches a receiver that would itself use 4 MiB entries in two
    XREADs (the first learns the chunk count from the header), not 16 MiB/4 MiB = 4 entries a read;
    its XDELs ride in front of the next command instead of costing a round trip after each read."""
    a, b = _comm(r, "a", chunk_bytes=1024), _comm(r, "b")
    x = np.arange(12_000, dtype=np.uint64)  # ~96 KiB: 94 chunks
    a.send("b", "big", {"x": x})
    reads, deletes = _calls(r, "xread"), _calls(r, "xdel")
    assert np.array_equal(b.recv("a", "big", timeout=5).tensors["x"], x)
    assert _calls(r, "xread") - reads == 2
    assert _calls(r, "xdel") - deletes == 1  # the first read's entries, deleted with the second read
    b.flush()
    assert r.xlen(Keys("t").mailbox("5", 1, "b", "a")) == 0


def test_publish_writes_the_payload_once_and_every_receiver_reads_it(r):
    keys = Keys("t")
    root = _comm(r, "root", chunk_bytes=4096)
    leaves = {n: _comm(r, n) for n in ("n1", "n2", "n3")}
    mean = np.random.default_rng(2).normal(size=5000).astype(np.float32)  # 20 kB: 5 shared chunks
    root.send("n2", "other", meta={"first": True})  # publish shares the per-pair sequence numbers
    sent = root.publish(list(leaves), "down", {"mean": mean}, {"round": 3})
    shared = keys.shared("5", 1, "root")
    assert r.xlen(shared) == 5
    assert all(r.xlen(keys.mailbox("5", 1, n, "root")) == (2 if n == "n2" else 1) for n in leaves)
    assert sent < 2 * mean.nbytes  # one payload, three small headers
    for c in leaves.values():
        m = c.recv("root", "down", timeout=3)
        assert m.meta == {"round": 3} and np.array_equal(m.tensors["mean"], mean) and m.tensors["mean"].flags.writeable
    assert leaves["n2"].recv("root", "other", timeout=3).meta == {"first": True}
    # once a receiver has seen a published header it reads the sender's shared stream with its mailbox:
    # the payload comes in the read that brings the header (MULTI/EXEC), no XRANGE of its own
    ranges = _calls(r, "xrange")
    root.publish(list(leaves), "down", {"mean": mean * 2})
    for c in leaves.values():
        assert np.array_equal(c.recv("root", "down", timeout=3).tensors["mean"], mean * 2)
    assert _calls(r, "xrange") == ranges
    # the next publish replaces the payload; a receiver that had not read the first finds it gone
    late = _comm(r, "n4")
    root.publish(["n4"], "down", {"mean": mean})
    root.publish(["n1", "n4"], "down", {"mean": mean + 1})
    assert r.xlen(shared) == 5
    assert np.array_equal(leaves["n1"].recv("root", "down", timeout=3).tensors["mean"], mean + 1)
    with pytest.raises(FrameError, match="shared payload on .* is missing or replaced"):
        late.recv("root", "down", timeout=3)


def test_a_forged_shared_payload_reference_is_a_frame_error(r):
    keys = Keys("t")
    box = keys.mailbox("5", 1, "b", "evil")
    r.xadd(box, {b"q": b"0", b"i": b"0", b"n": b"1", b"z": b"100", b"d": b"x", b"p": b"1 999999"})
    with pytest.raises(FrameError, match="shared payload of 999999 chunks"):
        _comm(r, "b").recv("evil", "x", timeout=2)
    r.xadd(keys.mailbox("5", 1, "c", "evil"), {b"q": b"0", b"i": b"0", b"n": b"1", b"z": b"100", b"d": b"x",
                                               b"p": b"one two"})
    with pytest.raises(FrameError, match="malformed shared-payload reference"):
        _comm(r, "c").recv("evil", "x", timeout=2)
