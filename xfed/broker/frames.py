"""Wire format of data-plane messages: a JSON header plus tensors as safetensors bytes; strict decoding.

A frame is::

    b"XFD1" | u32 LE header length H | H bytes of JSON header (space padded) | safetensors payload

and the payload is standard safetensors (u64 LE length N, N bytes of JSON, then the raw little-endian
data), so ``safetensors.numpy.load(payload)`` reads it too. Tensors are laid out by decreasing item
size and both JSON parts are padded, so every array starts at an offset that is a multiple of its
item size: decoding is zero-copy (`np.frombuffer`) and the arrays are aligned.

Decoding trusts nothing: it checks the total size against a limit before looking inside, every
header field's type and range, that the safetensors index exactly tiles the data (no holes, no
overlap, sizes match dtype x shape, computed in Python ints so a forged shape cannot overflow),
and allocates nothing that the buffer's real length does not already back. Every failure is a
`FrameError` naming the sender/channel when it is known. Nothing is ever unpickled or evaluated.

Signed frames (fed_conf.json pins identities): the sender's Ed25519 signature travels as hex in the
header's meta under the reserved key `sig`; it covers `header_digest` (the header as canonical
JSON without that key) and `payload_digest` (the safetensors bytes) among other fields (see
`xfed.security.messages`). `decode_frame(check=...)` lets the receiver verify it after the header
is validated and before any tensor is decoded.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from pydantic import ValidationError

from xfed import strict_json
from xfed.broker.messages import MAX_FRAME_HEADER_BYTES, WIRE_HEADER_FIELDS, WireHeader
from xfed.errors import FrameError
from xfed.strict_json import StrictJSONError

MAGIC = b"XFD1"
VERSION = 1
DEFAULT_MAX_FRAME_BYTES = 4 << 30
MAX_HEADER_BYTES = MAX_FRAME_HEADER_BYTES  # JSON header incl. meta
MAX_TENSORS = 65536
MAX_NDIM = 16
MAX_NAME_CHARS = 512
KINDS = ("tensors", "control")
SIGNATURE_KEY = "sig"               # reserved meta key: the message's signature (hex), when signed

# safetensors dtype names <-> numpy (little endian)
_ST_TO_NP = {
    "BOOL": np.dtype("?"), "U8": np.dtype("u1"), "I8": np.dtype("i1"), "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"), "U32": np.dtype("<u4"), "I32": np.dtype("<i4"), "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"), "F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8"),
}
_NP_TO_ST = {(dt.kind, dt.itemsize): name for name, dt in _ST_TO_NP.items()}
SUPPORTED_DTYPES = tuple(_ST_TO_NP)

_MAX_INT = 1 << 53


@dataclass(frozen=True)
class FrameHeader:
    """Who sent what to whom: checked against what the receiving channel expects."""

    sender: str
    receiver: str
    job: str
    stage: int
    channel: str
    seq: int
    attempt: int = 0
    kind: str = "tensors"


@dataclass
class Frame:
    header: FrameHeader
    meta: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


# --- encoding ----------------------------------------------------------------------------------------

def _pad_json(obj: Any, prefix_len: int) -> bytes:
    raw = json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode("utf-8")
    pad = (-(prefix_len + len(raw))) % 8
    return raw + b" " * pad


def as_wire_array(name: str, value: Any) -> np.ndarray:
    """`value` as a C-contiguous little-endian array of a supported dtype (no copy when it already is)."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS or name == "__metadata__":
        raise FrameError(f"tensor name {name!r} is not a 1-{MAX_NAME_CHARS} character string")
    arr = np.asarray(value)
    key = (arr.dtype.kind, arr.dtype.itemsize)
    if key not in _NP_TO_ST:
        raise FrameError(f"tensor {name!r}: dtype {arr.dtype} is not one of {', '.join(SUPPORTED_DTYPES)}")
    if arr.ndim > MAX_NDIM:
        raise FrameError(f"tensor {name!r}: {arr.ndim} dimensions (at most {MAX_NDIM})")
    wire = _ST_TO_NP[_NP_TO_ST[key]]
    return np.asarray(arr, dtype=wire, order="C")  # ascontiguousarray would turn 0-d into 1-d


def encode_safetensors_parts(tensors: Mapping[str, Any], prefix_len: int = 0) -> tuple[list, int]:
    """(buffers, total length) of a safetensors payload; buffers are zero-copy views of the arrays.

    `prefix_len` is where the payload will start in the final buffer (for alignment padding).
    """
    if len(tensors) > MAX_TENSORS:
        raise FrameError(f"{len(tensors)} tensors in one frame (at most {MAX_TENSORS})")
    arrays = {name: as_wire_array(name, value) for name, value in tensors.items()}
    # decreasing item size keeps every tensor aligned to its item size without holes
    order = sorted(arrays, key=lambda n: -arrays[n].dtype.itemsize)
    offsets: dict[str, list[int]] = {}
    pos = 0
    for name in order:
        offsets[name] = [pos, pos + arrays[name].nbytes]
        pos += arrays[name].nbytes
    index = {name: {"dtype": _NP_TO_ST[(a.dtype.kind, a.dtype.itemsize)], "shape": list(a.shape),
                    "data_offsets": offsets[name]} for name, a in arrays.items()}
    head = _pad_json(index, prefix_len + 8)
    parts: list = [struct.pack("<Q", len(head)), head]
    parts += [memoryview(arrays[n]).cast("B") for n in order if arrays[n].nbytes]
    return parts, 8 + len(head) + pos


def encode_frame_parts(header: FrameHeader, tensors: Mapping[str, Any] | None = None,
                       meta: Mapping[str, Any] | None = None) -> tuple[list, int]:
    """(buffers, total length) of a frame, without joining the tensor data (callers chunk it)."""
    tensors = tensors or {}
    kind = "tensors" if tensors else "control"
    payload, payload_len = encode_safetensors_parts(tensors, 0) if tensors else ([], 0)
    head = {"v": VERSION, "kind": kind, "sender": header.sender, "receiver": header.receiver,
            "job": header.job, "stage": header.stage, "attempt": header.attempt, "channel": header.channel,
            "seq": header.seq, "meta": dict(meta or {}), "payload_bytes": payload_len}
    try:
        head_bytes = _pad_json(head, 8)
    except (TypeError, ValueError) as exc:
        raise FrameError(f"channel {header.channel!r}: meta is not plain JSON ({exc})") from None
    if len(head_bytes) > MAX_HEADER_BYTES:
        raise FrameError(f"channel {header.channel!r}: header of {len(head_bytes)} bytes "
                         f"(meta too large, at most {MAX_HEADER_BYTES})")
    _check_header(head, f"frame to {header.receiver}")  # refuse to send what the peer would refuse
    # the prefix is padded to a multiple of 8, so the payload (padded for offset 0) stays aligned
    prefix = MAGIC + struct.pack("<I", len(head_bytes)) + head_bytes
    return [prefix, *payload], len(prefix) + payload_len


def header_digest(head: Mapping[str, Any]) -> bytes:
    """SHA-256 of a frame header (the JSON object) as canonical JSON, its signature left out.

    Canonical (sorted keys, no spaces) so sender and receiver hash the same bytes from the parsed
    object; the sender hashes its own header parsed back from the wire bytes (`wire_header`)."""
    meta = {k: v for k, v in head["meta"].items() if k != SIGNATURE_KEY}
    canonical = json.dumps({**head, "meta": meta}, sort_keys=True, separators=(",", ":"), allow_nan=False,
                           ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).digest()


def payload_digest(parts: Iterable[Any]) -> bytes:
    """SHA-256 of a payload given as buffers (one pass, no copy)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.digest()


def wire_header(prefix: bytes) -> dict[str, Any]:
    """The header object of an encoded frame prefix (MAGIC | u32 | JSON), as a receiver will parse it."""
    (h,) = struct.unpack_from("<I", prefix, 4)
    return parse_json(memoryview(prefix)[8: 8 + h], "frame header")


def encode_frame(header: FrameHeader, tensors: Mapping[str, Any] | None = None,
                 meta: Mapping[str, Any] | None = None) -> bytes:
    parts, _ = encode_frame_parts(header, tensors, meta)
    return b"".join(parts)


# --- decoding ----------------------------------------------------------------------------------------

def parse_json(data: bytes | bytearray | memoryview, what: str) -> Any:
    """Strict JSON (xfed.strict_json): FrameError naming `what` otherwise."""
    try:
        return strict_json.parse(data)
    except StrictJSONError as exc:
        raise FrameError(f"{what}: {exc}") from None


def _is_int(v: Any, lo: int = 0, hi: int = _MAX_INT) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v < hi


def _check_header(head: Any, what: str) -> FrameHeader:
    if not isinstance(head, dict):
        raise FrameError(f"{what}: header is not a JSON object")
    if set(head) != WIRE_HEADER_FIELDS:
        missing, extra = sorted(WIRE_HEADER_FIELDS - set(head)), sorted(set(head) - WIRE_HEADER_FIELDS)
        raise FrameError(f"{what}: header fields missing {missing} / unexpected {extra[:5]}")
    try:
        wire = WireHeader.model_validate(head)
    except ValidationError as err:
        raise FrameError(f"{what}: {_header_problem(err, head)}") from None
    if wire.kind == "control" and wire.payload_bytes:
        raise FrameError(f"{what}: a control frame carries {wire.payload_bytes} payload bytes")
    return FrameHeader(sender=wire.sender, receiver=wire.receiver, job=wire.job, stage=wire.stage,
                       channel=wire.channel, seq=wire.seq, attempt=wire.attempt, kind=wire.kind)


def _header_problem(err: ValidationError, head: dict[str, Any]) -> str:
    name = str(err.errors(include_url=False)[0]["loc"][0])
    value = head[name]
    if name == "v":
        return f"frame version {value!r}, this xfed reads version {VERSION}"
    if name == "kind":
        return f"kind {value!r} is not one of {KINDS}"
    if name in ("sender", "receiver", "job", "channel"):
        return f"bad {name} {str(value)[:70]!r}"
    if name == "meta":
        return "meta is not a JSON object"
    return f"{name} {str(value)[:30]!r} is not a non-negative integer"


def decode_safetensors(buf: bytes | bytearray | memoryview, offset: int, length: int,
                       what: str) -> dict[str, np.ndarray]:
    """Tensors from the safetensors bytes at buf[offset:offset+length], zero-copy, fully validated."""
    if length < 8:
        raise FrameError(f"{what}: safetensors payload of {length} bytes is truncated")
    (n,) = struct.unpack_from("<Q", buf, offset)
    if n > min(length - 8, MAX_HEADER_BYTES + 8 * MAX_TENSORS * 64):
        raise FrameError(f"{what}: safetensors header claims {n} bytes, payload has {length - 8}")
    index = parse_json(memoryview(buf)[offset + 8: offset + 8 + n], f"{what}: safetensors header")
    if not isinstance(index, dict):
        raise FrameError(f"{what}: safetensors header is not a JSON object")
    index.pop("__metadata__", None)
    if len(index) > MAX_TENSORS:
        raise FrameError(f"{what}: {len(index)} tensors (at most {MAX_TENSORS})")
    data_start, data_len = offset + 8 + n, length - 8 - n
    spans = []
    specs = []
    for name, spec in index.items():
        if not 0 < len(name) <= MAX_NAME_CHARS:
            raise FrameError(f"{what}: tensor name of {len(name)} characters")
        if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
            raise FrameError(f"{what}: tensor {name[:60]!r}: entry must have dtype, shape, data_offsets")
        dtype = _ST_TO_NP.get(spec["dtype"]) if isinstance(spec["dtype"], str) else None
        if dtype is None:
            raise FrameError(f"{what}: tensor {name[:60]!r}: dtype {str(spec['dtype'])[:20]!r} not supported")
        shape, offs = spec["shape"], spec["data_offsets"]
        if (not isinstance(shape, list) or len(shape) > MAX_NDIM
                or not all(_is_int(d, 0, 1 << 40) for d in shape)):
            raise FrameError(f"{what}: tensor {name[:60]!r}: bad shape {str(shape)[:60]}")
        if not isinstance(offs, list) or len(offs) != 2 or not all(_is_int(o, 0, 1 << 62) for o in offs):
            raise FrameError(f"{what}: tensor {name[:60]!r}: bad data_offsets {str(offs)[:60]}")
        nbytes = math.prod(shape) * dtype.itemsize  # Python ints: a forged shape cannot overflow
        if offs[1] - offs[0] != nbytes or offs[1] > data_len:
            raise FrameError(f"{what}: tensor {name[:60]!r}: {offs[1] - offs[0]} bytes at {offs} but "
                             f"{spec['dtype']}{shape} needs {nbytes} of the {data_len} present")
        spans.append((offs[0], offs[1]))
        specs.append((name, dtype, shape, offs[0]))
    pos = 0
    for begin, end in sorted(spans):
        if begin != pos:
            raise FrameError(f"{what}: safetensors data has a hole or overlap at byte {pos}")
        pos = end
    if pos != data_len:
        raise FrameError(f"{what}: safetensors data is {data_len} bytes, the index covers {pos}")
    out: dict[str, np.ndarray] = {}
    for name, dtype, shape, begin in specs:
        count = math.prod(shape)
        arr = np.frombuffer(buf, dtype=dtype, count=count, offset=data_start + begin) if count else \
            np.empty(0, dtype=dtype)
        out[name] = arr.reshape(shape)
    return out


def decode_frame(buf: bytes | bytearray | memoryview, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 expect: FrameHeader | None = None, what: str | None = None,
                 check: Callable[[FrameHeader, dict, memoryview], None] | None = None) -> Frame:
    """Parse and validate one frame; with `expect`, sender/receiver/job/stage/attempt/channel must match.

    `check(header, head, payload)` runs once the header is validated and before any tensor is
    decoded (the receiver's routing and signature checks); it raises to refuse the frame.

    Arrays are views into `buf` (writable when `buf` is a bytearray). Raises FrameError only, its
    message starting with `what` (who sent it, when the caller knows).
    """
    if what is None:
        what = f"frame from {expect.sender} on {expect.channel!r}" if expect else "frame"
    if not isinstance(buf, (bytes, bytearray, memoryview)):
        raise FrameError(f"{what}: expected bytes, got {type(buf).__name__}")
    if isinstance(buf, memoryview) and (buf.ndim != 1 or buf.itemsize != 1):
        buf = buf.cast("B")
    size = len(buf)
    if size > max_bytes:
        raise FrameError(f"{what}: {size} bytes exceeds the limit of {max_bytes}")
    if size < 8 or bytes(buf[:4]) != MAGIC:
        raise FrameError(f"{what}: not an xfed frame (bad magic or truncated)")
    (h,) = struct.unpack_from("<I", buf, 4)
    if h > min(size - 8, MAX_HEADER_BYTES):
        raise FrameError(f"{what}: header claims {h} bytes, frame has {size - 8}")
    head = parse_json(memoryview(buf)[8: 8 + h], f"{what}: header")
    header = _check_header(head, what)
    if header.kind == "tensors" or head["payload_bytes"]:
        if head["payload_bytes"] != size - 8 - h:
            raise FrameError(f"{what}: header says {head['payload_bytes']} payload bytes, "
                             f"{size - 8 - h} arrived (truncated or padded)")
    elif size != 8 + h:
        raise FrameError(f"{what}: {size - 8 - h} stray bytes after a control frame")
    if expect is not None:
        for name in ("sender", "receiver", "job", "stage", "attempt", "channel"):
            if getattr(header, name) != getattr(expect, name):
                raise FrameError(f"{what}: {name} is {getattr(header, name)!r}, expected "
                                 f"{getattr(expect, name)!r} (misrouted or forged)")
    if check is not None:
        check(header, head, memoryview(buf)[8 + h:])
    tensors = decode_safetensors(buf, 8 + h, size - 8 - h, what) if header.kind == "tensors" else {}
    return Frame(header=header, meta=head["meta"], tensors=tensors)
