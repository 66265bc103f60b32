"""What a message signature hashes: the header (canonical, signature left out) and the payload bytes."""
import numpy as np
import pytest

from xfed.broker.frames import (
    SIGNATURE_KEY,
    FrameHeader,
    decode_frame,
    encode_frame,
    encode_frame_parts,
    header_digest,
    payload_digest,
    wire_header,
)
from xfed.errors import FrameError

HEADER = FrameHeader(sender="a", receiver="b", job="5", stage=1, channel="agg/0/up", seq=2, attempt=0)
TENSORS = {"x": np.arange(10, dtype=np.float32), "w": np.uint64(7)}


def test_header_digest_ignores_the_signature_and_key_order_but_nothing_else():
    parts, _ = encode_frame_parts(HEADER, TENSORS, {"round": 0, "k": [1, 2.5]})
    head = wire_header(parts[0])
    base = header_digest(head)
    signed = {**head, "meta": {**head["meta"], SIGNATURE_KEY: "ab" * 64}}
    assert header_digest(signed) == base
    assert header_digest(dict(reversed(list(head.items())))) == base
    for name, value in [("seq", 3), ("receiver", "c"), ("channel", "agg/1/up"), ("payload_bytes", 1),
                        ("meta", {"round": 1, "k": [1, 2.5]}), ("meta", {"round": 0, "k": [1, 2.5], "x": 0})]:
        assert header_digest({**head, name: value}) != base, (name, value)


def test_payload_digest_covers_exactly_the_bytes_after_the_header():
    parts, size = encode_frame_parts(HEADER, TENSORS, {})
    seen = []
    frame = decode_frame(b"".join(bytes(p) for p in parts),
                         check=lambda h, head, payload: seen.append((h, head, payload_digest([payload]))))
    (h, head, digest), = seen
    assert h == HEADER and head == wire_header(parts[0]) and digest == payload_digest(parts[1:])
    assert np.array_equal(frame.tensors["x"], TENSORS["x"])


def test_check_runs_before_any_tensor_is_decoded_and_can_refuse_the_frame(monkeypatch):
    import xfed.broker.frames as frames

    order = []
    real = frames.decode_safetensors
    monkeypatch.setattr(frames, "decode_safetensors", lambda *a: order.append("decode") or real(*a))
    data = encode_frame(HEADER, TENSORS, {})
    decode_frame(data, check=lambda *a: order.append("check"))
    assert order == ["check", "decode"]

    def refuse(h, head, payload):
        raise FrameError("refused")

    with pytest.raises(FrameError, match="refused"):
        decode_frame(data, check=refuse)
    assert order == ["check", "decode"]
