"""The data plane: point-to-point, broadcast and gather of tensor frames through per-pair mailbox streams.

Each (job, stage, attempt, receiver, sender) has its own Redis stream (see `keys.Keys.mailbox`), so an
ACL can let a node read only its own mailboxes and write only as itself. A message is one frame
(`frames.py`) split into entries of at most `chunk_bytes`; every entry carries the message's sequence
number, its chunk index and count and the frame's total size, so the receiver checks order, refuses
gaps, skips duplicates left by a retried send, and never allocates more than actually arrived.
Consumed entries are deleted by XDELs pipelined in front of the node's next command (no round trip
of their own; `flush` deletes at once); the sender refreshes a TTL on the mailbox so nothing
outlives an abandoned job, and `expire_job_keys` expires all of a job's keys when it ends. The
receiver sizes each read from the sender's declared chunk count and frame size, so a message cut
in small chunks still arrives in few round trips.

Entry fields, received messages and chunking live in `mailbox.py`; receiving (`recv`, `gather`,
`arrivals`, the read loop) in `receiving.py`; `Comm.publish` (one payload written once for several
receivers) in `published.py`.

Every wait is bounded: `recv`/`gather` raise `ChannelTimeout` naming the peers that did not answer,
and return early with `JobError` when `should_stop()` turns true or the job's hash says FAILED/STOPPED.

With `auth` (an `xfed.security.messages.MessageAuth`, injected by the node: the broker does not
import security) every message this node sends is signed once, over the digests of its header and
payload (the payload hashed once per broadcast), and every message from a pinned sender must carry
a signature that verifies for this exact session, mailbox, sequence number and content, checked
before its tensors are decoded; failures raise SecurityError naming the channel and the pair.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Iterable, Mapping, Protocol

import redis

from xfed.broker.failover import is_transient
from xfed.broker.frames import (
    DEFAULT_MAX_FRAME_BYTES,
    SIGNATURE_KEY,
    FrameHeader,
    as_wire_array,
    encode_frame_parts,
    header_digest,
    payload_digest,
    wire_header,
)
from xfed.broker.keys import Keys, check_id
from xfed.broker.mailbox import (  # noqa: F401 - Message, CommStats and the defaults are part of this module's API
    DEFAULT_CHUNK_BYTES,
    DEFAULT_TIMEOUT_S,
    MAILBOX_TTL_S,
    REDIS_DOWN,
    CommStats,
    Inbox,
    Message,
    chunk_parts,
)
from xfed.broker.published import Publishing
from xfed.broker.receiving import Receiving
from xfed.broker.retry import retry_until_deadline
from xfed.errors import BrokerError, FrameError, JobError


class MessageAuth(Protocol):
    """What Comm needs to sign and verify messages (implemented by xfed.security.messages.MessageAuth)."""

    can_sign: bool

    def pinned(self, node: str) -> bool: ...
    def sign(self, **fields: Any) -> bytes: ...
    def verify(self, signature: bytes, **fields: Any) -> bool: ...


class Comm(Receiving, Publishing):
    """Channels of one node within one (job, stage, attempt), over a redis.Redis client.

    `timeout` bounds every recv/gather (override per call); `should_stop` is polled while waiting;
    `chunk_bytes` is the entry size above which frames are split; `max_frame_bytes` caps what a
    peer may send (checked before anything is allocated); `send_retry_s` is how long a send keeps
    retrying while Redis is unreachable (a restart, a short outage) before BrokerError; `auth`
    signs what this node sends and checks what pinned peers send (module docstring).
    """

    def __init__(self, r: redis.Redis, keys: Keys, job_id: str | int, stage_id: int, node_id: str, *,
                 attempt: int = 0, timeout: float = DEFAULT_TIMEOUT_S,
                 should_stop: Callable[[], bool] | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, poll_s: float = 0.2,
                 job_check_s: float = 1.0, mailbox_ttl_s: int = MAILBOX_TTL_S, send_retry_s: float = 60.0,
                 auth: MessageAuth | None = None, incarnation: int = 0) -> None:
        self.r, self.keys = r, keys
        # how often this node was restarted into this stage (a rejoin): its mailboxes are new ones
        self.incarnation = int(incarnation)
        self._in_inc: dict[str, int] = {}   # peer -> its incarnation as this node reads from it
        self._out_inc: dict[str, int] = {}  # peer -> its incarnation as this node sends to it
        self.job_id = check_id("job id", job_id)
        self.stage_id, self.attempt = int(stage_id), int(attempt)
        self.node_id = check_id("node id", node_id)
        self.timeout = float(timeout)
        self.should_stop = should_stop or (lambda: False)
        if chunk_bytes < 1024:
            raise ValueError("chunk_bytes must be at least 1024")
        self.chunk_bytes, self.max_frame_bytes = int(chunk_bytes), int(max_frame_bytes)
        self.poll_s, self.job_check_s, self.mailbox_ttl_s = poll_s, job_check_s, int(mailbox_ttl_s)
        self.send_retry_s = float(send_retry_s)
        self.auth = auth
        self.stats = CommStats()
        self._send_seq: dict[str, int] = collections.defaultdict(int)
        self._inboxes: dict[str, Inbox] = {}
        self._by_key: dict[bytes, Inbox] = {}
        self._next_job_check = 0.0
        self._consumed: dict[str, list[bytes]] = {}  # mailbox -> entry ids read but not yet deleted
        self._published = 0  # publishes so far (each replaces the one before on the shared stream)
        self._by_shared: dict[bytes, Inbox] = {}

    # --- sending -------------------------------------------------------------------------------
    def _mailbox(self, receiver: str, sender: str) -> str:
        if sender == self.node_id:
            incs = (self._out_inc.get(receiver, 0), self.incarnation)
        else:
            incs = (self.incarnation, self._in_inc.get(sender, 0))
        return self.keys.mailbox(self.job_id, self.stage_id, receiver, sender, self.attempt, incs)

    def set_incarnation(self, peer: str, incarnation: int, *, inbound: bool = True, outbound: bool = True) -> None:
        """`peer` was restarted into this stage as `incarnation`: from now on read from (`inbound`) and
        send to (`outbound`) the mailboxes of that incarnation, sequence numbers from 0. What the old
        incarnation left unread is dropped (it died; a rejoin starts clean)."""
        peer, k = check_id("node id", peer), int(incarnation)
        if inbound and self._in_inc.get(peer, 0) != k:
            self._in_inc[peer] = k
            old = self._inboxes.pop(peer, None)
            if old is not None:
                self._by_key.pop(old.key.encode(), None)
                if old.shared_key is not None:
                    self._by_shared.pop(old.shared_key.encode(), None)
        if outbound and self._out_inc.get(peer, 0) != k:
            self._out_inc[peer] = k
            self._send_seq[peer] = 0

    def send(self, peer: str, tag: str, tensors: Mapping[str, Any] | None = None,
             meta: Mapping[str, Any] | None = None) -> int:
        """Append one message for `peer`; returns the bytes sent. Never blocks on the receiver."""
        return self.broadcast([peer], tag, tensors, meta)

    def broadcast(self, peers: Iterable[str], tag: str, tensors: Mapping[str, Any] | None = None,
                  meta: Mapping[str, Any] | None = None) -> int:
        """Send the same message to every peer (encoded once); returns the total bytes sent."""
        peers = [check_id("node id", p) for p in peers]
        # convert once; per peer only the small JSON prefix differs and the arrays are not copied
        wire = {name: as_wire_array(name, value) for name, value in (tensors or {}).items()}
        digest: list[bytes] = []  # the payload is hashed once for all receivers' signatures
        total_sent = 0
        for peer in peers:
            key, entries, size = self._frame(peer, tag, wire, meta, digest)
            self._append([(key, entries)], peer, tag)
            self._sent(peer, size)
            total_sent += size
        return total_sent

    def send_each(self, tag: str, metas: Mapping[str, Mapping[str, Any]]) -> int:
        """One tensor-less message per peer, each its own meta, appended all or none (MULTI/EXEC): a sender
        killed while sending leaves either every peer with its message or none (SecAgg's round keys, whose
        shares must reach all of the peers that pair with the sender, or none of them)."""
        frames = {check_id("node id", p): self._frame(p, tag, {}, m, []) for p, m in metas.items()}
        if not frames:
            return 0
        self._append([(key, entries) for key, entries, _ in frames.values()], ",".join(frames), tag,
                     transaction=True)
        for peer, (_, _, size) in frames.items():
            self._sent(peer, size)
        return sum(size for _, _, size in frames.values())

    def _frame(self, peer: str, tag: str, wire: Mapping[str, Any], meta: Mapping[str, Any] | None,
               digest: list[bytes]) -> tuple[str, list[dict], int]:
        """The mailbox key and chunk entries of one message to `peer` at its next sequence number."""
        if meta and SIGNATURE_KEY in meta:
            raise FrameError(f"message {tag!r}: meta key {SIGNATURE_KEY!r} is reserved for the signature")
        seq = self._send_seq[peer]
        header = FrameHeader(sender=self.node_id, receiver=peer, job=self.job_id, stage=self.stage_id,
                             channel=tag, seq=seq, attempt=self.attempt)
        parts, size = encode_frame_parts(header, wire, meta)
        if self.auth is not None and self.auth.can_sign:  # one signature per receiver (it binds the receiver)
            if not digest:
                digest.append(payload_digest(parts[1:]))
            sig = self.auth.sign(**self._signed(tag, self.node_id, peer, seq,
                                                header_digest(wire_header(parts[0])), digest[0]))
            parts, size = encode_frame_parts(header, wire, {**(meta or {}), SIGNATURE_KEY: sig.hex()})
        if size > self.max_frame_bytes:
            raise FrameError(f"message {tag!r} to {peer} is {size} bytes (limit {self.max_frame_bytes})")
        chunks = chunk_parts(parts, self.chunk_bytes)
        if len(chunks) > 1:
            # a large message's frame header goes alone first: a receiver that reads one entry from
            # each of many senders (a streaming root, `arrivals(one_by_one)`) then holds K small
            # headers and one message at a time, not a chunk of every message
            chunks = [parts[0], *chunk_parts(parts[1:], self.chunk_bytes)]
        n = len(chunks)
        return (self._mailbox(peer, self.node_id),
                [{b"q": seq, b"i": i, b"n": n, b"z": size, b"d": data} for i, data in enumerate(chunks)], size)

    def _sent(self, peer: str, size: int) -> None:
        self._send_seq[peer] += 1
        self.stats.bytes_sent += size
        self.stats.messages_sent += 1

    def _signed(self, channel: str, sender: str, receiver: str, seq: int, head: bytes, body: bytes) -> dict:
        """The fields a message signature binds (xfed.security.messages.message_transcript)."""
        return dict(namespace=self.keys.namespace, job=self.job_id, stage=self.stage_id, attempt=self.attempt,
                    channel=channel, sender=sender, receiver=receiver, seq=seq, header_digest=head,
                    payload_digest=body)

    def _append(self, messages: list[tuple[str, list[dict]]], peer: str, tag: str, *,
                transaction: bool = False, replace: str | None = None) -> None:
        """XADD all entries of the messages (+ refresh their TTLs), retrying through a Redis outage.

        A retry after a partly applied pipeline re-sends the whole message; the receiver restarts
        assembly at chunk 0 and skips a complete duplicate by its sequence number. With `transaction`
        the messages are applied all or none (every key is in the job's {J} slot, so this holds on a
        Redis Cluster too). `replace`: a stream deleted first, in the same pipeline (a publish).
        """
        def send() -> None:
            pipe = self.r.pipeline(transaction=transaction)
            deletes = self._queue_deletes(pipe)
            if replace is not None:
                pipe.delete(replace)
            for key, entries in messages:
                for fields in entries:
                    pipe.xadd(key, fields)
                pipe.expire(key, self.mailbox_ttl_s)
            replies = pipe.execute(raise_on_error=False)
            self._consumed.clear()
            for reply in replies[deletes:]:
                if isinstance(reply, REDIS_DOWN):
                    raise reply
                if isinstance(reply, redis.ResponseError):
                    if is_transient(reply):  # NOREPLICAS, MASTERDOWN...: retried like a lost connection
                        raise redis.ConnectionError(str(reply))
                    raise BrokerError(f"job {self.job_id}: Redis refused {tag!r} to {peer}: {reply}")

        self._retry_send(send, tag, peer)

    def _retry_send(self, send: Callable[[], None], tag: str, to: str) -> None:
        def stopped() -> None:
            if self.should_stop():
                raise JobError(f"job {self.job_id}: stopped while node {self.node_id} was sending {tag!r}")

        retry_until_deadline(
            send, seconds=self.send_retry_s, transient=REDIS_DOWN, first_delay=0.1, max_delay=2.0,
            between=stopped,
            give_up=lambda exc: BrokerError(f"job {self.job_id}: could not send {tag!r} to {to} "
                                            f"(Redis unreachable for {self.send_retry_s:g} s: {exc})"))


def expire_job_keys(r: redis.Redis, keys: Keys, job_id: str | int, ttl_s: int) -> int:
    """Set a TTL on every key of one job (hash, events, mailboxes); returns how many keys were found."""
    found = 0
    pipe = r.pipeline(transaction=False)
    for key in r.scan_iter(match=keys.job_pattern(job_id), count=1000):
        pipe.expire(key, int(ttl_s))
        found += 1
    pipe.execute()
    return found
