"""Control messages: schema validation (pure) and streams with consumer groups against real Redis."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xfed.broker.keys import Keys
from xfed.broker.streams import MAX_CONTROL_BYTES, ControlStream, decode_message, encode_message
from xfed.errors import FrameError


def test_roundtrip_of_a_valid_command():
    msg = {"type": "run_stage", "job": "1", "stage": 0, "attempt": 0, "participants": ["a", "b"]}
    assert decode_message(encode_message(msg)) == msg


@pytest.mark.parametrize("raw,match", [
    (b"\xff\xfe", "not valid JSON"),
    (b"[1,2]", "must be a JSON object"),
    (b'{"type": "pickle"}', "unknown control message type"),
    (b'{"type": "stop_job", "job": "1"}', "lacks field 'reason'"),
    (b'{"type": "run_stage", "job": "1", "stage": "0", "attempt": 0, "participants": []}', "stage has type str"),
    (b'{"type": "run_stage", "job": "1", "stage": true, "attempt": 0, "participants": []}', "stage has type bool"),
    (b'{"type": "done", "job": "1", "node": "n", "stage": 0, "n_stages": 1, "ts": NaN}', "not valid JSON"),
    (b"{" * 100_000, "not valid JSON"),
    (b" " * (MAX_CONTROL_BYTES + 1), "exceeds"),
    (b'{"type": "stop_job", "job": "../x", "reason": "r"}', "job is not a valid id"),
    (b'{"type": "run_stage", "job": "1", "stage": 4294967296, "attempt": 0, "participants": []}', "out of range"),
    (b'{"type": "start", "request_id": "r", "resume": "*"}', "resume is not a valid id"),
])
def test_malformed_messages_are_frame_errors(raw, match):
    with pytest.raises(FrameError, match=match):
        decode_message(raw, where="test")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                              lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                              max_leaves=20).map(lambda v: json.dumps(v).encode())))
def test_fuzzed_messages_only_raise_frame_errors(raw):
    try:
        msg = decode_message(raw)
    except FrameError:
        return
    assert isinstance(msg, dict) and isinstance(msg["type"], str)


@pytest.mark.integration
def test_group_read_ack_pending_and_malformed_entries(redis_server):
    r = redis_server.client()
    cmds = ControlStream(r, Keys("st").node_cmd("n1"))
    cmds.ensure_group("g")
    cmds.ensure_group("g")  # idempotent
    cmds.add({"type": "stop_job", "job": "1", "reason": "x"})
    r.xadd(cmds.key, {b"m": b"not json"})
    r.xadd(cmds.key, {b"other": b"1"})
    got = cmds.read_group("g", "n1", block_ms=100)
    assert got[0].msg["reason"] == "x" and got[0].error is None
    assert "not valid JSON" in got[1].error and "exactly one field" in got[2].error
    assert len(cmds.read_group("g", "n1", pending=True)) == 3
    cmds.ack("g", *(e.id for e in got))
    assert cmds.read_group("g", "n1", pending=True) == []
    assert cmds.read_group("g", "n1", block_ms=50) == []
    r.delete(cmds.key)  # Redis lost the stream (restart without data): the group comes back
    assert cmds.read_group("g", "n1", block_ms=10) == []
    cmds.add({"type": "stop_job", "job": "2", "reason": "y"})
    assert cmds.read_group("g", "n1", block_ms=10)[0].msg["job"] == "2"
    assert cmds.read("0-0")[0].msg["job"] == "2" and cmds.last_id() != "0-0"


def test_encode_refuses_invalid_and_oversized():
    with pytest.raises(FrameError):
        encode_message({"type": "stop_job", "job": 1, "reason": "x"})
    with pytest.raises(FrameError, match="limit"):
        encode_message({"type": "stop_job", "job": "1", "reason": "x" * MAX_CONTROL_BYTES})
