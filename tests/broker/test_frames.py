"""Frames: round trips for every dtype and shape, safetensors compatibility, and strict rejection."""

import json
import struct

import numpy as np
import pytest
import safetensors.numpy as stn

from xfed.broker.frames import (
    SUPPORTED_DTYPES,
    FrameHeader,
    decode_frame,
    encode_frame,
)
from xfed.errors import FrameError

H = FrameHeader(sender="node-1", receiver="assist", job="7", stage=1, channel="round-0", seq=4, attempt=2)
NP_DTYPES = ["?", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8"]


def _payload(frame: bytes) -> bytes:
    (h,) = struct.unpack_from("<I", frame, 4)
    return frame[8 + h:]


@pytest.mark.parametrize("dtype", NP_DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (5,), (2, 3, 4)])
def test_every_dtype_and_shape_round_trips_exactly(dtype, shape):
    rng = np.random.default_rng(0)
    arr = (rng.integers(0, 2**63, size=shape, dtype=np.uint64).view(np.uint64) if dtype == "u8"
           else (rng.random(shape) * 100).astype(dtype))
    frame = decode_frame(bytearray(encode_frame(H, {"t": arr})), expect=H)
    out = frame.tensors["t"]
    assert out.dtype == np.dtype(dtype) and out.shape == shape
    assert np.array_equal(out, arr)
    assert out.flags.writeable and out.flags.aligned


def test_uint64_extremes_and_mixed_dtypes_keep_names_order_and_alignment():
    tensors = {"b": np.array([True, False]), "u64": np.array([0, 1, 2**64 - 1], dtype=np.uint64),
               "h": np.arange(3, dtype=np.float16), "f": np.arange(5, dtype=np.float32), "s": np.float64(2.5)}
    frame = decode_frame(encode_frame(H, tensors, {"weight": 3, "names": ["a"]}), expect=H)
    assert list(frame.tensors) == list(tensors)
    for name, arr in tensors.items():
        assert np.array_equal(frame.tensors[name], arr)
        assert frame.tensors[name].flags.aligned
    assert frame.meta == {"weight": 3, "names": ["a"]}
    assert frame.header == H
    assert not frame.tensors["u64"].flags.writeable  # views into immutable bytes


def test_payload_is_standard_safetensors():
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "u": np.array([7], dtype=np.uint64)}
    loaded = stn.load(_payload(encode_frame(H, tensors)))
    assert set(loaded) == {"a", "u"}
    assert np.array_equal(loaded["a"], tensors["a"]) and loaded["u"][0] == 7


def test_non_contiguous_and_big_endian_inputs_are_normalised():
    base = np.arange(12, dtype=">f8").reshape(3, 4)[:, ::2]
    out = decode_frame(encode_frame(H, {"x": base})).tensors["x"]
    assert out.dtype == np.dtype("<f8") and np.array_equal(out, base)


def test_meta_only_frame_is_control_kind():
    frame = decode_frame(encode_frame(H, None, {"public": "ab12"}))
    assert frame.header.kind == "control" and frame.tensors == {} and frame.meta == {"public": "ab12"}


def test_unsupported_dtype_and_bad_meta_are_refused_when_sending():
    with pytest.raises(FrameError, match="complex"):
        encode_frame(H, {"c": np.zeros(2, dtype=np.complex64)})
    with pytest.raises(FrameError, match="object"):
        encode_frame(H, {"o": np.array([object()])})
    with pytest.raises(FrameError, match="JSON"):
        encode_frame(H, None, {"x": float("nan")})
    with pytest.raises(FrameError, match="channel"):
        encode_frame(FrameHeader("a", "b", "1", 0, "bad channel", 0), None, {})


def test_expect_mismatch_names_the_field():
    frame = encode_frame(H, {"a": np.zeros(1)})
    other = FrameHeader(sender="node-2", receiver="assist", job="7", stage=1, channel="round-0", seq=4, attempt=2)
    with pytest.raises(FrameError, match="sender is 'node-1'"):
        decode_frame(frame, expect=other)


def test_forged_shape_cannot_claim_more_bytes_than_present():
    frame = bytearray(encode_frame(H, {"a": np.zeros(4, dtype=np.float32)}))
    (h,) = struct.unpack_from("<I", frame, 4)
    payload = bytes(frame[8 + h:])
    (n,) = struct.unpack_from("<Q", payload, 0)
    index = json.loads(payload[8:8 + n])
    index["a"]["shape"] = [2**39, 2**39]
    forged_head = json.dumps(index).encode()
    forged_head += b" " * (-len(forged_head) % 8)
    forged_payload = struct.pack("<Q", len(forged_head)) + forged_head + payload[8 + n:]
    head = json.loads(bytes(frame[8:8 + h]))
    head["payload_bytes"] = len(forged_payload)
    hb = json.dumps(head).encode()
    hb += b" " * (-(8 + len(hb)) % 8)
    forged = b"XFD1" + struct.pack("<I", len(hb)) + hb + forged_payload
    with pytest.raises(FrameError, match="needs"):
        decode_frame(forged)


def test_oversized_frame_rejected_by_length_before_parsing():
    frame = encode_frame(H, {"a": np.zeros(1000, dtype=np.uint64)})
    with pytest.raises(FrameError, match="exceeds the limit"):
        decode_frame(frame, max_bytes=1000)


def test_truncated_and_padded_frames_are_refused():
    frame = encode_frame(H, {"a": np.arange(10, dtype=np.int64)})
    with pytest.raises(FrameError):
        decode_frame(frame[:-1])
    with pytest.raises(FrameError):
        decode_frame(frame + b"\0")


def test_supported_dtypes_cover_safetensors_numpy_types():
    assert set(SUPPORTED_DTYPES) == {"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "F32",
                                     "F64"}
