"""Fuzz: random, truncated, oversized, bit-flipped and wrongly-typed input to decode_frame -> FrameError only.

About 3,000 (random) + 6,100 (truncated / bit-flipped) + 3,100 (wrongly typed header fields)
+ 1,600 (forged safetensors index) + 500 (oversized) = 14,000+ frames per run; any exception
other than FrameError (or a hang) fails the test. Hypothesis picks the structure; a seeded
`random` drawn from it supplies the bulk cheaply (hypothesis costs ~10 ms per example here).
"""

import json
import random
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xfed import strict_json
from xfed.broker.frames import FrameHeader, decode_frame, encode_frame
from xfed.errors import FrameError
from xfed.strict_json import StrictJSONError

H = FrameHeader(sender="a", receiver="b", job="1", stage=0, channel="c", seq=0)
VALID = [
    encode_frame(H, {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "u": np.arange(3, dtype=np.uint64)},
                 {"k": [1, 2]}),
    encode_frame(H, {"s": np.float64(1.0), "e": np.zeros((0, 3), np.int8), "b": np.array([True])}),
    encode_frame(H, None, {"ctl": True}),
]
LIMIT = 1 << 16


def _decode(data) -> None:
    try:
        decode_frame(data, max_bytes=LIMIT)
    except FrameError:
        pass


def _wrap(head: dict, payload: bytes) -> bytes:
    hb = json.dumps(head).encode()
    return b"XFD1" + struct.pack("<I", len(hb)) + hb + payload


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=512), st.integers(0, 2**32).map(random.Random))
def test_random_bytes_only_raise_frame_error(data, rnd):
    _decode(data)
    _decode(b"XFD1" + data)
    try:
        strict_json.parse(data)
    except StrictJSONError:
        pass
    for _ in range(28):  # cheap bulk: 30 frames per example
        _decode(b"XFD1" + struct.pack("<I", rnd.randrange(0, 600)) + rnd.randbytes(rnd.randrange(0, 600)))


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(0, len(VALID) - 1), st.integers(0, 10**9), st.integers(0, 2**32).map(random.Random))
def test_truncated_and_bit_flipped_frames_only_raise_frame_error(which, cut, rnd):
    whole = VALID[which]
    assert decode_frame(whole, max_bytes=LIMIT).header.channel == H.channel  # the unmodified one decodes
    _decode(whole[: cut % len(whole)])
    for _ in range(30):  # 30 truncations and 30 bit-flipped copies per example
        _decode(whole[: rnd.randrange(len(whole))])
        frame = bytearray(whole)
        for _ in range(rnd.randrange(1, 5)):
            frame[rnd.randrange(len(frame))] ^= 1 << rnd.randrange(8)
        _decode(frame)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)


_ODD = [None, True, False, -1, 0, 1, 2**53, 2**64, -(2**63), 1.5, -0.0, 1e308, "", "x", "A" * 300, "\u0000",
        "../x", [], {}, [1, "a"], {"a": 1}, [[[]]], {"v": 1}]


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(["v", "kind", "sender", "receiver", "job", "stage", "attempt", "channel", "seq", "meta",
                        "payload_bytes"]), _json_values, st.integers(0, 2**32).map(random.Random))
def test_wrongly_typed_header_fields_only_raise_frame_error(field, value, rnd):
    (h,) = struct.unpack_from("<I", VALID[0], 4)
    base = json.loads(VALID[0][8:8 + h])
    for v in [value] + [rnd.choice(_ODD) for _ in range(29)]:  # 30 frames per example
        head = dict(base)
        head[field] = v
        _decode(_wrap(head, VALID[0][8 + h:]))
    del base[field]  # and the field missing altogether
    _decode(_wrap(base, VALID[0][8 + h:]))


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(["dtype", "shape", "data_offsets"]), _json_values,
       st.integers(0, 2**64 - 1), st.integers(0, 2**32).map(random.Random))
def test_forged_safetensors_index_only_raises_frame_error(field, value, claimed_len, rnd):
    (h,) = struct.unpack_from("<I", VALID[0], 4)
    head = json.loads(VALID[0][8:8 + h])
    payload = VALID[0][8 + h:]
    (n,) = struct.unpack_from("<Q", payload, 0)
    for v in [value] + [rnd.choice(_ODD + [[1 << 39, 1 << 39], [0, 1 << 40], "U64", "F8"]) for _ in range(14)]:
        index = json.loads(payload[8:8 + n])
        index["w"][field] = v
        ib = json.dumps(index).encode()
        body = struct.pack("<Q", len(ib)) + ib + payload[8 + n:]
        head["payload_bytes"] = len(body)
        _decode(_wrap(head, body))
    # a header that claims a gigantic safetensors index must be refused without allocating it
    head["payload_bytes"] = len(payload)
    _decode(_wrap(head, struct.pack("<Q", claimed_len) + payload[8:]))


def test_oversized_inputs_are_refused_fast_by_length():
    big = bytes(LIMIT + 1)
    for _ in range(200):
        _decode(big)
    rnd = random.Random(1)
    for _ in range(300):
        claimed = rnd.randrange(0, 2**32)
        _decode(b"XFD1" + struct.pack("<I", claimed) + b"{}")
    for wrong in (None, 3, "text", [1], {"a": 1}, 1.5):
        try:
            decode_frame(wrong)  # type: ignore[arg-type]
        except FrameError:
            pass
