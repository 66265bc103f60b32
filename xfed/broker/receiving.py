"""The receiving half of `Comm`: `recv`, `gather`, `gather_until` and `arrivals` over the node's
mailboxes, one read loop for all of them (sized reads, in-order chunk reassembly, duplicates skipped,
signatures checked before any tensor is decoded, consumed entries deleted with the next command).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Iterator

import redis

from xfed.broker.frames import (
    SIGNATURE_KEY,
    FrameHeader,
    decode_frame,
    header_digest,
    payload_digest,
)
from xfed.broker.keys import check_id
from xfed.broker.mailbox import (
    ENTRY_FIELDS,
    POINTER_FIELDS,
    READ_BYTES,
    REDIS_DOWN,
    Inbox,
    Message,
    int_field,
)
from xfed.errors import BrokerError, ChannelTimeout, FrameError, JobError, SecurityError

_ABORT_STATES = {b"FAILED", b"STOPPED"}
_REST_BLOCK_MS = 50  # how long each read after the first in a pipelined pump blocks (at most)


class Receiving:
    """The receiving half of `xfed.broker.channels.Comm` (a mixin: it uses the Comm's state)."""

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

    def discard(self, stale: Callable[[str], bool]) -> int:
        """Drop the messages read but never asked for whose tag `stale` picks (a straggler's upload
        that came after its round ended would otherwise stay in memory for the whole stage);
        returns how many were dropped."""
        dropped = 0
        for inbox in self._inboxes.values():
            for tag in [t for t, q in inbox.pending.items() if q and stale(t)]:
                dropped += len(inbox.pending.pop(tag))
        return dropped

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

    def _read_count(self, ib: Inbox) -> int:
        """Entries for one XREAD of this mailbox, sized from the sender's own header: a message being
        assembled declares its chunk count and size, so the rest of it comes in one read (up to
        READ_BYTES of the sender's entries), whatever chunk size this receiver would use itself."""
        if ib.chunks and ib.n > len(ib.chunks):
            entry = max(1, -(-ib.size // ib.n))
            return max(1, min(ib.n - len(ib.chunks), max(1, READ_BYTES // entry)))
        return max(1, READ_BYTES // self.chunk_bytes)  # nothing in progress: a first read

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

        One XREAD per mailbox, pipelined, not one XREAD over all of them: Redis (7.0 and before)
        answers a blocked multi-stream XREAD with the one stream that woke it, so K uploads landing
        together cost a wake-up and then another read, a round trip, for the rest. Pipelined, each
        read blocks in turn until its mailbox has something, and the replies come back together. The
        first read blocks up to block_s, each later one up to 50 ms (less when there are many: a
        cycle stays within about block_s + poll_s, so stops are still seen); mailboxes are read in
        the order their last messages arrived, so a read rarely sits behind a late sender while the
        others wait. A sender's shared stream (a published payload) is read without blocking right
        after its mailbox: the payload is written with the header pointing at it, so it is there
        when the header is.

        Consumed entries are deleted by XDELs pipelined in front of this Comm's next command (the
        next XREAD or send), not by a round trip of their own after each read."""
        order = sorted(inboxes, key=lambda ib: ib.arrived)
        first_ms = max(1, int(block_s * 1000))
        # short, so that uploads landing while a cycle idles in a later read are rare (the mailboxes read
        # before it would wait for the next cycle: a round trip), and a cycle stays within ~2 x poll_s
        rest_ms = min(first_ms, max(10, min(_REST_BLOCK_MS, int(self.poll_s * 1000 / max(1, len(order) - 1)))))
        pipe = self.r.pipeline(transaction=False)
        deletes = self._queue_deletes(pipe)
        for i, ib in enumerate(order):
            pipe.xread({ib.key: ib.last_id}, count=count or self._read_count(ib),
                       block=first_ms if i == 0 else rest_ms)
            if ib.shared_key is not None:
                chunks, entry = ib.shared_hint
                pipe.xread({ib.shared_key: ib.shared_last}, count=max(1, min(chunks, READ_BYTES // entry)))
        try:
            replies = pipe.execute(raise_on_error=False)
        except REDIS_DOWN:
            time.sleep(min(block_s, 0.5))
            return
        self._consumed.clear()  # a refused XDEL leaves entries to expire with the mailbox
        streams: list = []
        for reply in replies[deletes:]:
            if isinstance(reply, REDIS_DOWN):
                time.sleep(min(block_s, 0.5))
                return  # nothing taken from this reply: the next read starts where this one did
            if isinstance(reply, redis.ResponseError):
                names = ", ".join(ib.key for ib in order)
                raise BrokerError(f"job {self.job_id}: Redis refused reading {names}: {reply}") from None
            if reply:
                streams.extend(reply.items() if isinstance(reply, dict) else reply)  # RESP3 answers a map
        mailboxes = []
        for key, entries in streams:  # shared payloads first: a header in this reply may point at them
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
        n = int_field(fields, b"n", what, (size // 1024) + 3)  # 1 KiB chunks at least, + a header entry
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
        inbox.arrived = time.monotonic()
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
