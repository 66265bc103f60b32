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

Entry fields, received messages and chunking live in `mailbox.py`; `Comm.publish` (one payload
written once for several receivers) in `published.py`.

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
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol

import redis

from xfed.broker.failover import is_transient
from xfed.broker.frames import (
    DEFAULT_MAX_FRAME_BYTES,
    SIGNATURE_KEY,
    FrameHeader,
    as_wire_array,
    decode_frame,
    encode_frame_parts,
    header_digest,
    payload_digest,
    wire_header,
)
from xfed.broker.keys import Keys, check_id
from xfed.broker.mailbox import (  # noqa: F401 - Message, CommStats and the defaults are part of this module's API
    DEFAULT_CHUNK_BYTES,
    DEFAULT_TIMEOUT_S,
    ENTRY_FIELDS,
    MAILBOX_TTL_S,
    POINTER_FIELDS,
    READ_BYTES,
    REDIS_DOWN,
    CommStats,
    Inbox,
    Message,
    chunk_parts,
    int_field,
)
from xfed.broker.published import Publishing
from xfed.broker.retry import retry_until_deadline
from xfed.errors import BrokerError, ChannelTimeout, FrameError, JobError, SecurityError

_ABORT_STATES = {b"FAILED", b"STOPPED"}


class MessageAuth(Protocol):
    """What Comm needs to sign and verify messages (implemented by xfed.security.messages.MessageAuth)."""

    can_sign: bool

    def pinned(self, node: str) -> bool: ...
    def sign(self, **fields: Any) -> bytes: ...
    def verify(self, signature: bytes, **fields: Any) -> bool: ...


class Comm(Publishing):
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

    # --- receiving -----------------------------------------------------------------------------
    def _inbox(self, peer: str) -> Inbox:
        inbox = self._inboxes.get(peer)
        if inbox is None:
            key = self._mailbox(self.node_id, check_id("node id", peer))
            inbox = self._inboxes[peer] = Inbox(peer=peer, key=key)
            self._by_key[key.encode()] = inbox
        return inbox

    def recv(self, peer: str, tag: str, timeout: float | None = None) -> Message:
        """The next message tagged `tag` from `peer` (messages with other tags are kept for later)."""
        return self.gather([peer], tag, timeout)[peer]

    def gather(self, peers: Iterable[str], tag: str, timeout: float | None = None) -> dict[str, Message]:
        """One message tagged `tag` from every peer; ChannelTimeout names those that did not answer."""
        peers = list(dict.fromkeys(peers))
        got = dict(self.arrivals(peers, tag, timeout))
        return {p: got[p] for p in peers}

    def gather_until(self, peers: Iterable[str], tag: str, timeout: float) -> dict[str, Message]:
        """Like `gather`, but after `timeout` returns what arrived instead of raising (dropout-tolerant
        rounds: the caller decides what a missing peer means). Everything already in Redis is read."""
        peers = list(dict.fromkeys(peers))
        got = dict(self.arrivals(peers, tag, timeout, partial=True))
        return {p: got[p] for p in peers if p in got}

    def arrivals(self, peers: Iterable[str], tag: str, timeout: float | None = None, *,
                 partial: bool = False, one_by_one: bool = False) -> Iterator[tuple[str, Message]]:
        """(peer, message) for one message tagged `tag` from each peer, in the order they complete.

        The one receive loop of `gather` (ChannelTimeout at the deadline) and `gather_until`
        (`partial`: one last read of what is there at the deadline, then stop). A streaming
        aggregator consumes each upload while the others are still on the wire; the time the
        caller spends between two yields is not counted as waiting. `one_by_one`: while a
        message is half read, read only its mailbox, so at most one large message (plus one
        entry from each other mailbox) is in memory at a time; the rest waits in Redis."""
        peers = list(dict.fromkeys(peers))
        limit = self.timeout if timeout is None else float(timeout)
        start = time.monotonic()
        deadline = start + limit
        done: set[str] = set()
        inboxes = [self._inbox(p) for p in peers]
        last = False
        t0: float | None = start  # None while the caller holds a yielded message
        try:
            while True:
                for inbox in inboxes:
                    if inbox.peer not in done and inbox.pending[tag]:
                        done.add(inbox.peer)
                        self.stats.wait_s += time.monotonic() - t0
                        t0 = None
                        yield inbox.peer, inbox.pending[tag].popleft()
                        t0 = time.monotonic()
                missing = [ib for ib in inboxes if ib.peer not in done]
                if not missing or last:
                    return
                now = time.monotonic()
                if not partial and now >= deadline:
                    names = ", ".join(ib.peer for ib in missing)
                    raise ChannelTimeout(f"job {self.job_id} stage {self.stage_id}: no {tag!r} from {names} "
                                         f"after {limit:g} s")
                self._check_abort(now, tag)
                last = partial and now >= deadline  # one more read of what is there, then stop
                reading, count = missing, None
                if one_by_one:  # finish the furthest message first; otherwise one entry from each
                    started = [ib for ib in missing if ib.chunks]
                    reading, count = ([max(started, key=lambda ib: len(ib.chunks) / ib.n)], None) if started \
                        else (missing, 1)
                self._pump(reading, 0.001 if last else min(self.poll_s, deadline - now), count)
        finally:
            if t0 is not None:
                self.stats.wait_s += time.monotonic() - t0

    def recv_any(self, peer: str, tags: list[str], timeout: float | None = None) -> Message:
        """The next message from `peer` tagged with any of `tags` (first in `tags` order if several wait)."""
        limit = self.timeout if timeout is None else float(timeout)
        start = time.monotonic()
        deadline = start + limit
        inbox = self._inbox(peer)
        try:
            while True:
                for tag in tags:
                    if inbox.pending[tag]:
                        return inbox.pending[tag].popleft()
                now = time.monotonic()
                if now >= deadline:
                    raise ChannelTimeout(f"job {self.job_id} stage {self.stage_id}: none of {tags} from {peer} "
                                         f"after {limit:g} s")
                self._check_abort(now, tags[0])
                self._pump([inbox], min(self.poll_s, deadline - now))
        finally:
            self.stats.wait_s += time.monotonic() - start

    def _check_abort(self, now: float, tag: str) -> None:
        if self.should_stop():
            raise JobError(f"job {self.job_id}: stopped while node {self.node_id} waited for {tag!r}")
        if now < self._next_job_check:
            return
        self._next_job_check = now + self.job_check_s
        try:
            state, reason = self.r.hmget(self.keys.job(self.job_id), ["state", "reason"])
        except REDIS_DOWN:
            return  # the wait loop keeps retrying until its deadline
        if state in _ABORT_STATES:
            why = f": {reason.decode('utf-8', 'replace')}" if reason else ""
            raise JobError(f"job {self.job_id} is {state.decode()}{why} (node {self.node_id} stopped waiting "
                           f"for {tag!r})")

    def _read_count(self, inboxes: list[Inbox]) -> int:
        """Entries per mailbox for one XREAD, sized from the senders' own headers: a message being
        assembled declares its chunk count and size, so the rest of it comes in one read (up to
        READ_BYTES of the sender's entries), whatever chunk size this receiver would use itself."""
        count = max(1, READ_BYTES // self.chunk_bytes)  # nothing in progress: a first read
        for ib in inboxes:
            if ib.chunks and ib.n > len(ib.chunks):
                entry = max(1, -(-ib.size // ib.n))
                count = max(count, min(ib.n - len(ib.chunks), max(1, READ_BYTES // entry)))
            if ib.shared_key is not None:  # the next publish is likely the size of the last one
                chunks, entry = ib.shared_hint
                count = max(count, min(chunks, max(1, READ_BYTES // entry)))
        return count

    def _queue_deletes(self, pipe: Any) -> int:
        """Put the consumed entries' XDELs in front of `pipe`'s next command; how many were queued."""
        for key, ids in self._consumed.items():
            pipe.xdel(key, *ids)
        return len(self._consumed)

    def flush(self) -> None:
        """Delete the entries consumed so far now (otherwise they go with this Comm's next command)."""
        if self._consumed:
            pipe = self.r.pipeline(transaction=False)
            self._queue_deletes(pipe)
            try:
                pipe.execute(raise_on_error=False)
            except REDIS_DOWN:
                return  # kept for the next command; the mailbox TTL bounds them anyway
            self._consumed.clear()

    def _pump(self, inboxes: list[Inbox], block_s: float, count: int | None = None) -> None:
        """Read what has arrived in these mailboxes (blocking up to block_s) and assemble it.

        Consumed entries are deleted by XDELs pipelined in front of this Comm's next command (the
        next XREAD or send), not by a round trip of their own after each read."""
        streams = {ib.key: ib.last_id for ib in inboxes}
        for ib in inboxes:  # a published payload arrives in the same read as the header pointing at it
            if ib.shared_key is not None:
                streams[ib.shared_key] = ib.shared_last
        pipe = self.r.pipeline(transaction=False)
        deletes = self._queue_deletes(pipe)
        pipe.xread(streams, count=count or self._read_count(inboxes), block=max(1, int(block_s * 1000)))
        try:
            replies = pipe.execute(raise_on_error=False)
        except REDIS_DOWN:
            time.sleep(min(block_s, 0.5))
            return
        self._consumed.clear()  # a refused XDEL leaves entries to expire with the mailbox
        reply = replies[deletes]
        if isinstance(reply, REDIS_DOWN):
            time.sleep(min(block_s, 0.5))
            return
        if isinstance(reply, redis.ResponseError):
            raise BrokerError(f"job {self.job_id}: Redis refused reading {', '.join(streams)}: {reply}") from None
        if not reply:
            return
        if isinstance(reply, dict):  # RESP3 answers a map
            reply = list(reply.items())
        mailboxes = []
        for key, entries in reply:  # shared payloads first: a header in this reply may point at them
            key = key if isinstance(key, bytes) else key.encode()
            if key in self._by_shared:
                self._keep_shared(self._by_shared[key], entries)
            else:
                mailboxes.append((key, entries))
        for key, entries in mailboxes:
            inbox = self._by_key[key]
            ids = [eid for eid, _ in entries]
            if ids:
                inbox.last_id = ids[-1]
                self._consumed.setdefault(inbox.key, []).extend(ids)
            for eid, fields in entries:
                self._feed(inbox, eid, fields)

    def _feed(self, inbox: Inbox, eid: bytes, fields: dict) -> None:
        what = f"job {self.job_id}: message from {inbox.peer} (entry {eid.decode(errors='replace')})"
        if not isinstance(fields, dict) or set(fields) not in (ENTRY_FIELDS, POINTER_FIELDS):
            got = sorted(k.decode(errors="replace") for k in fields) if isinstance(fields, dict) else fields
            raise FrameError(f"{what}: malformed mailbox entry with fields {str(got)[:80]}")
        seq = int_field(fields, b"q", what, 1 << 53)
        size = int_field(fields, b"z", what, self.max_frame_bytes + 1)
        n = int_field(fields, b"n", what, (size // 1024) + 2)
        i = int_field(fields, b"i", what, n)
        data = fields[b"d"]
        if n < 1:
            raise FrameError(f"{what}: chunk count 0")
        if b"p" in fields:
            if n != 1 or seq < inbox.next_seq:
                if n != 1:
                    raise FrameError(f"{what}: a published message's header comes in one entry, not {n}")
                return  # a duplicate left by a retried publish
            data = self._fetch_shared(inbox, fields[b"p"], data, size, what)
        if seq < inbox.next_seq:
            return  # a duplicate left by a retried send
        if seq > inbox.next_seq:
            raise FrameError(f"{what}: sequence {seq}, expected {inbox.next_seq} (messages lost or injected)")
        if i == 0:
            inbox.seq, inbox.n, inbox.size, inbox.chunks, inbox.got = seq, n, size, [], 0
        elif inbox.seq != seq or inbox.n != n or inbox.size != size or len(inbox.chunks) != i:
            raise FrameError(f"{what}: chunk {i}/{n} out of order")
        inbox.got += len(data)
        if inbox.got > size:
            raise FrameError(f"{what}: {inbox.got} bytes arrived, the frame declared {size}")
        inbox.chunks.append(data)
        if i < n - 1:
            return
        if inbox.got != size:
            raise FrameError(f"{what}: {inbox.got} bytes arrived, the frame declared {size} (truncated)")
        buf = bytearray().join(inbox.chunks)  # one copy: writable arrays, no claim-sized allocation
        inbox.chunks = []
        inbox.next_seq = seq + 1
        frame = decode_frame(buf, max_bytes=self.max_frame_bytes, what=what,
                             check=lambda h, head, payload: self._admit(inbox.peer, seq, h, head, payload, what))
        h = frame.header
        frame.meta.pop(SIGNATURE_KEY, None)
        inbox.pending[h.channel].append(Message(meta=frame.meta, tensors=frame.tensors, sender=inbox.peer,
                                                tag=h.channel, seq=seq, nbytes=size))
        self.stats.bytes_received += size
        self.stats.messages_received += 1

    def _admit(self, peer: str, seq: int, h: FrameHeader, head: dict, payload: memoryview, what: str) -> None:
        """Routing and signature checks on a parsed header, before its tensors are decoded."""
        expected = (peer, self.node_id, self.job_id, self.stage_id, self.attempt, seq)
        if (h.sender, h.receiver, h.job, h.stage, h.attempt, h.seq) != expected:
            raise FrameError(f"{what}: header says {h.sender}->{h.receiver} job {h.job} stage {h.stage}."
                             f"{h.attempt} seq {h.seq} (misrouted or forged)")
        sig = head["meta"].get(SIGNATURE_KEY)
        pinned = self.auth is not None and self.auth.pinned(peer)
        if sig is None and not pinned:
            return
        message = f"message {h.channel} {peer} -> {self.node_id}"
        if sig is None:
            raise SecurityError(f"{message}: unsigned, but identities are pinned (refused: {peer} must sign)")
        if not pinned:
            raise SecurityError(f"{message}: signed, but this node's fed_conf.json pins no identity for {peer} "
                                "(parties disagree on `identities`?)")
        try:
            signature = bytes.fromhex(sig)
        except (TypeError, ValueError):
            signature = b""
        fields = self._signed(h.channel, peer, self.node_id, seq, header_digest(head), payload_digest([payload]))
        if not self.auth.verify(signature, **fields):
            raise SecurityError(f"{message}: signature does not verify against the pinned identity of {peer} "
                                "(tampered, replayed or from another session)")


def expire_job_keys(r: redis.Redis, keys: Keys, job_id: str | int, ttl_s: int) -> int:
    """Set a TTL on every key of one job (hash, events, mailboxes); returns how many keys were found."""
    found = 0
    pipe = r.pipeline(transaction=False)
    for key in r.scan_iter(match=keys.job_pattern(job_id), count=1000):
        pipe.expire(key, int(ttl_s))
        found += 1
    pipe.execute()
    return found
