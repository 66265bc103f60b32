"""What travels in a mailbox stream: entry fields, received messages, per-sender receive state, chunking.

A message is one frame (`frames.py`) cut into entries of at most the sender's chunk size (a message
of several entries has its frame header alone in the first, `Comm._frame`); every
entry carries the message's sequence number (q), its chunk index (i) and count (n), the frame's
total size (z) and the bytes (d). A published message (`published.py`) is one entry holding the
frame's header alone, with p = "<publish number> <chunks>" naming its payload on the sender's
shared stream, whose entries carry the publish number (u) and the bytes (d).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xfed.broker.failover import TRANSIENT_ERRORS
from xfed.errors import FrameError

DEFAULT_CHUNK_BYTES = 4 << 20  # measured: 4 MiB entries cost nothing over one SET of 29 MB
DEFAULT_TIMEOUT_S = 600.0
READ_BYTES = 16 << 20  # one XREAD asks for about this many bytes per mailbox
MAILBOX_TTL_S = 7 * 24 * 3600
ENTRY_FIELDS = {b"q", b"i", b"n", b"z", b"d"}
POINTER_FIELDS = ENTRY_FIELDS | {b"p"}  # a published message: header here, payload on the shared stream
SHARED_FIELDS = {b"u", b"d"}
# a restart or failover (READONLY, CLUSTERDOWN, TRYAGAIN, LOADING too): waited out, never a failure
REDIS_DOWN = (*TRANSIENT_ERRORS, ConnectionError, TimeoutError)


@dataclass
class Message:
    """One received message: JSON meta and named numpy arrays (writable, aligned)."""

    meta: dict[str, Any]
    tensors: dict[str, np.ndarray]
    sender: str = ""
    tag: str = ""
    seq: int = 0
    nbytes: int = 0


@dataclass
class CommStats:
    """Running totals for one Comm; callers take differences around a round."""

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    wait_s: float = 0.0

    def snapshot(self) -> CommStats:
        return CommStats(**self.__dict__)


@dataclass
class Inbox:
    """Receive state for one sender: stream position, message being assembled, messages by tag."""

    peer: str
    key: str
    last_id: bytes = b"0-0"
    next_seq: int = 0
    seq: int = -1
    n: int = 0
    size: int = 0
    chunks: list = field(default_factory=list)
    got: int = 0
    pending: dict[str, collections.deque] = field(default_factory=lambda: collections.defaultdict(collections.deque))
    # the sender's shared stream (Comm.publish), read with the mailbox once a header pointed at it
    shared_key: str | None = None
    shared_last: bytes = b"0-0"
    shared: dict[bytes, list[bytes]] = field(default_factory=dict)  # publish number -> payload chunks
    shared_hint: tuple[int, int] = (0, 1)  # (chunks, bytes per chunk) of its last publish: how much to read
    arrived: float = 0.0  # monotonic time its last message completed: mailboxes are read earliest first


def int_field(fields: dict, name: bytes, what: str, hi: int) -> int:
    raw = fields[name]
    if not isinstance(raw, bytes) or not raw.isdigit() or len(raw) > 19:
        raise FrameError(f"{what}: field {name.decode()} is not a non-negative integer")
    value = int(raw)
    if value >= hi:
        raise FrameError(f"{what}: field {name.decode()}={value} out of range (< {hi})")
    return value


def stream_id(eid: bytes) -> tuple[int, int]:
    ms, _, seq = eid.partition(b"-")
    return int(ms), int(seq or 0)


def chunk_parts(parts: list, chunk_bytes: int) -> list:
    """Cut a frame's buffers into entries of at most chunk_bytes; large tensors are sliced, not copied."""
    chunks: list = []
    pieces: list = []
    room = chunk_bytes
    for part in parts:
        view = memoryview(part).cast("B") if not isinstance(part, bytes) else memoryview(part)
        while len(view):
            take = view[:room]
            pieces.append(take)
            room -= len(take)
            view = view[len(take):]
            if room == 0:
                chunks.append(pieces[0] if len(pieces) == 1 else b"".join(pieces))
                pieces, room = [], chunk_bytes
    if pieces or not chunks:
        chunks.append(pieces[0] if len(pieces) == 1 else b"".join(pieces))
    return chunks
