"""Signed messages on a real redis-server: what a broker rewriting mailbox entries can no longer do.

The tests play the broker directly on the mailbox streams: they read a message's entries, decode
the frame with xfed's own decoder, change one thing, re-encode it (keeping or dropping the
signature) and put it back, then check that the receiver refuses it before decoding any tensor.
"""
import numpy as np
import pytest

import xfed.broker.frames as frames
from xfed.broker.channels import Comm
from xfed.broker.connection import connect
from xfed.broker.frames import SIGNATURE_KEY, FrameHeader, decode_frame, encode_frame
from xfed.broker.keys import Keys
from xfed.errors import FrameError, SecurityError
from xfed.security.identity import generate
from xfed.security.messages import MessageAuth

pytestmark = pytest.mark.integration

KEYS = Keys("sig")
NODES = ("root", "a", "b")
IDS = {n: generate(n) for n in NODES}
PINS = {n: k.public_hex for n, k in IDS.items()}


@pytest.fixture
def r(redis_server):
    return connect(redis_server.address, retry_s=5)


def _comm(r, node, job="5", *, pins=PINS, signs=True, attempt=0, **kw):
    auth = MessageAuth(pins, IDS[node] if signs else None) if pins is not None else None
    return Comm(r, KEYS, job, 1, node, attempt=attempt, poll_s=0.05, job_check_s=0.1, timeout=3, auth=auth, **kw)


def _take(r, receiver, sender, job="5", attempt=0):
    """Remove a mailbox's entries (one message) and return its frame, as a broker would see it."""
    box = KEYS.mailbox(job, 1, receiver, sender, attempt)
    entries = r.xrange(box)
    r.delete(box)
    assert entries, box
    data = b"".join(fields[b"d"] for _, fields in entries)
    return int(entries[0][1][b"q"]), decode_frame(data)


def _put(r, frame, seq, *, job="5", attempt=0, header=None, meta=None, tensors=None):
    h = header or frame.header
    data = encode_frame(h, frame.tensors if tensors is None else tensors, frame.meta if meta is None else meta)
    box = KEYS.mailbox(job, 1, h.receiver, h.sender, attempt)
    r.xadd(box, {b"q": seq, b"i": 0, b"n": 1, b"z": len(data), b"d": data})


def _moved(h, **over):
    fields = dict(sender=h.sender, receiver=h.receiver, job=h.job, stage=h.stage, channel=h.channel, seq=h.seq,
                  attempt=h.attempt, kind=h.kind)
    return FrameHeader(**{**fields, **over})


@pytest.fixture
def no_tensor_decoding(monkeypatch):
    """Call before the receiver's recv: from then on, decoding any tensors fails the test."""
    def refuse(*a, **kw):
        raise AssertionError("tensors decoded before the signature was checked")
    return lambda: monkeypatch.setattr(frames, "decode_safetensors", refuse)


def test_chunked_signed_message_round_trips_and_the_signature_does_not_reach_the_caller(r):
    a, root = _comm(r, "a", chunk_bytes=4096), _comm(r, "root")
    x = np.random.default_rng(1).integers(0, 2**64, size=20_000, dtype=np.uint64)
    a.send("root", "agg/0/up", {"x": x}, {"round": 0})
    box = KEYS.mailbox("5", 1, "root", "a")
    entries = r.xrange(box)
    assert len(entries) > 30  # one signature for the whole message, not per chunk
    frame = decode_frame(b"".join(f[b"d"] for _, f in entries))
    assert len(frame.meta[SIGNATURE_KEY]) == 128
    m = root.recv("a", "agg/0/up")
    assert np.array_equal(m.tensors["x"], x) and m.meta == {"round": 0}


def test_broadcast_signs_each_receivers_copy_for_that_receiver(r):
    root = _comm(r, "root")
    root.broadcast(["a", "b"], "agg/0/down", {"mean": np.arange(4.0)})
    sigs = {}
    for n in ("a", "b"):
        seq, frame = _take(r, n, "root")
        sigs[n] = frame.meta[SIGNATURE_KEY]
        _put(r, frame, seq)
        c = _comm(r, n)
        assert np.array_equal(c.recv("root", "agg/0/down").tensors["mean"], np.arange(4.0))
        c.flush()  # delete what it consumed now, so _take below sees only the next message
    assert sigs["a"] != sigs["b"]
    # a's copy handed to b (receiver rewritten) does not verify for b
    root.broadcast(["a", "b"], "agg/1/down", {"mean": np.arange(4.0)})
    seq, frame_a = _take(r, "a", "root")
    _take(r, "b", "root")
    _put(r, frame_a, seq, header=_moved(frame_a.header, receiver="b"))
    b = _comm(r, "b")
    b._inbox("root").next_seq = seq
    with pytest.raises(SecurityError, match="message agg/1/down root -> b: signature does not verify"):
        b.recv("root", "agg/1/down")


@pytest.mark.parametrize("change", ["payload", "meta", "channel", "drop_tensor"])
def test_a_tampered_message_is_refused_naming_the_pair_and_channel(r, change, no_tensor_decoding):
    _comm(r, "root").send("a", "agg/0/down", {"mean": np.arange(6.0), "n": np.int64(3)}, {"round": 0})
    seq, frame = _take(r, "a", "root")
    if change == "payload":
        _put(r, frame, seq, tensors={**frame.tensors, "mean": frame.tensors["mean"] + 1})
    elif change == "meta":
        _put(r, frame, seq, meta={**frame.meta, "round": 1})
    elif change == "channel":
        _put(r, frame, seq, header=_moved(frame.header, channel="agg/1/down"))
    else:
        _put(r, frame, seq, tensors={"mean": frame.tensors["mean"]})
    channel = "agg/1/down" if change == "channel" else "agg/0/down"
    no_tensor_decoding()
    with pytest.raises(SecurityError, match=f"^message {channel} root -> a: signature does not verify against "
                                            r"the pinned identity of root \(tampered"):
        _comm(r, "a").recv("root", channel)


def test_unsigned_message_from_a_pinned_sender_is_refused(r, no_tensor_decoding):
    # the broker strips the signature (a downgrade), or the sender does not sign at all
    _comm(r, "root").send("a", "agg/0/down", {"mean": np.arange(3.0)})
    seq, frame = _take(r, "a", "root")
    _put(r, frame, seq, meta={k: v for k, v in frame.meta.items() if k != SIGNATURE_KEY})
    no_tensor_decoding()
    with pytest.raises(SecurityError, match="message agg/0/down root -> a: unsigned, but identities are pinned"):
        _comm(r, "a").recv("root", "agg/0/down")
    _comm(r, "root", job="6", signs=False).send("a", "agg/0/down", {"mean": np.arange(3.0)})
    with pytest.raises(SecurityError, match="unsigned, but identities are pinned"):
        _comm(r, "a", job="6").recv("root", "agg/0/down")


def test_replay_at_another_sequence_number_is_refused(r, no_tensor_decoding):
    root = _comm(r, "root")
    root.send("a", "agg/0/down", {"mean": np.arange(3.0)})
    seq0, first = _take(r, "a", "root")
    _put(r, first, seq0)
    a = _comm(r, "a")
    a.recv("root", "agg/0/down")
    a.flush()
    root.send("a", "agg/0/down", {"mean": np.arange(3.0) + 9})
    seq1, _ = _take(r, "a", "root")
    _put(r, first, seq1, header=_moved(first.header, seq=seq1))  # the old message, renumbered
    no_tensor_decoding()
    with pytest.raises(SecurityError, match="signature does not verify"):
        a.recv("root", "agg/0/down")


@pytest.mark.parametrize("where", [dict(job="6"), dict(attempt=1)])
def test_replay_into_another_session_is_refused(r, where, no_tensor_decoding):
    _comm(r, "root").send("a", "agg/0/down", {"mean": np.arange(3.0)})
    seq, frame = _take(r, "a", "root")
    job, attempt = where.get("job", "5"), where.get("attempt", 0)
    _put(r, frame, seq, job=job, attempt=attempt, header=_moved(frame.header, job=job, attempt=attempt))
    no_tensor_decoding()
    with pytest.raises(SecurityError, match="signature does not verify"):
        _comm(r, "a", job=job, attempt=attempt).recv("root", "agg/0/down")


def test_another_namespace_is_another_session(r, no_tensor_decoding):
    Comm(r, Keys("sig2"), "5", 1, "root", auth=MessageAuth(PINS, IDS["root"])).send("a", "x", meta={"v": 1})
    box2, box = Keys("sig2").mailbox("5", 1, "a", "root"), KEYS.mailbox("5", 1, "a", "root")
    for _, fields in r.xrange(box2):
        r.xadd(box, fields)
    no_tensor_decoding()
    with pytest.raises(SecurityError, match="signature does not verify"):
        _comm(r, "a").recv("root", "x")


def test_unpinned_sender_is_accepted_and_a_signed_message_to_a_node_without_identities_is_refused(r):
    # identities pinned for the label trainers only (the assist trainer not): its messages pass unsigned
    pins = {n: PINS[n] for n in ("a", "b")}
    _comm(r, "root", pins=pins, signs=False).send("a", "agg/0/down", {"mean": np.ones(2)})
    assert _comm(r, "a", pins=pins).recv("root", "agg/0/down").tensors["mean"].tolist() == [1.0, 1.0]
    # parties that disagree on identities: said so rather than silently ignored
    _comm(r, "a").send("root", "agg/0/up", meta={"v": 1})
    with pytest.raises(SecurityError, match="signed, but this node's fed_conf.json pins no identity for a"):
        _comm(r, "root", pins={"b": PINS["b"]}, signs=False).recv("a", "agg/0/up")


def test_without_identities_nothing_is_added_and_the_signature_key_is_reserved(r):
    plain = _comm(r, "root", pins=None)
    plain.send("a", "agg/0/down", {"mean": np.ones(2)}, {"round": 0})
    seq, frame = _take(r, "a", "root")
    assert frame.meta == {"round": 0}
    with pytest.raises(FrameError, match="'sig' is reserved"):
        plain.send("a", "x", meta={SIGNATURE_KEY: "00"})


def test_a_published_payload_altered_in_redis_does_not_verify(r, no_tensor_decoding):
    root = _comm(r, "root")
    root.publish(["a", "b"], "agg/0/down", {"mean": np.arange(4.0)})
    a = _comm(r, "a")
    assert np.array_equal(a.recv("root", "agg/0/down").tensors["mean"], np.arange(4.0))
    shared = KEYS.shared("5", 1, "root")
    [(eid, fields)] = r.xrange(shared)
    r.delete(shared)
    r.xadd(shared, {b"u": fields[b"u"], b"d": fields[b"d"].replace(np.float64(3.0).tobytes(),
                                                                    np.float64(4.0).tobytes())})
    no_tensor_decoding()
    with pytest.raises(SecurityError, match="message agg/0/down root -> b: signature does not verify"):
        _comm(r, "b").recv("root", "agg/0/down")
