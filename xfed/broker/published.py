"""`Comm.publish`: one payload written once for several receivers, and reading it back.

The payload goes to the sender's shared stream (`Keys.shared`); each receiver's mailbox gets the
frame's header alone, with that receiver's sequence number and signature (which binds the
payload's digest, as for a broadcast), pointing at it. A receiver that has seen one such header
reads the sender's shared stream together with its mailbox, so the payload arrives in the read that
brings the header (the sender writes both in one MULTI/EXEC, and the receiver reads the shared stream
right after its mailbox in the same pipeline: `receiving.py`); otherwise it reads the payload then.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import redis

from xfed.broker.frames import (
    SIGNATURE_KEY,
    FrameHeader,
    as_wire_array,
    encode_frame_parts,
    header_digest,
    payload_digest,
    wire_header,
)
from xfed.broker.keys import check_id
from xfed.broker.mailbox import SHARED_FIELDS, Inbox, chunk_parts, stream_id
from xfed.errors import BrokerError, FrameError


class Publishing:
    """The publishing half of `xfed.broker.channels.Comm` (a mixin: it uses the Comm's state)."""

    def publish(self, peers: Iterable[str], tag: str, tensors: Mapping[str, Any] | None = None,
                meta: Mapping[str, Any] | None = None) -> int:
        """Send the same message to every peer with its payload written once (returns the bytes written).

        The payload goes to this node's shared stream (`Keys.shared`); each peer's mailbox gets the
        frame's header alone (its own sequence number and signature, which binds the payload's
        digest as for `broadcast`) pointing at it, and the receiver fetches the payload when it
        reads the header. Everything is one pipelined round trip. A publish replaces this node's
        previous one in this stage: use it where every receiver has read a message before the next
        is published (a round's mean: the next one needs every party's next upload first)."""
        peers = [check_id("node id", p) for p in peers]
        if meta and SIGNATURE_KEY in meta:
            raise FrameError(f"message {tag!r}: meta key {SIGNATURE_KEY!r} is reserved for the signature")
        if not peers:
            return 0
        wire = {name: as_wire_array(name, value) for name, value in (tensors or {}).items()}
        signing = self.auth is not None and self.auth.can_sign
        self._published += 1
        pub = self._published
        shared = self.keys.shared(self.job_id, self.stage_id, self.node_id, self.attempt)
        chunks: list | None = None
        entries: list[tuple[str, str, list[dict]]] = []
        total = 0
        body_digest = None
        for peer in peers:
            seq = self._send_seq[peer]
            header = FrameHeader(sender=self.node_id, receiver=peer, job=self.job_id, stage=self.stage_id,
                                 channel=tag, seq=seq, attempt=self.attempt)
            parts, size = encode_frame_parts(header, wire, meta)
            if signing:
                body_digest = body_digest or payload_digest(parts[1:])
                sig = self.auth.sign(**self._signed(tag, self.node_id, peer, seq,
                                                    header_digest(wire_header(parts[0])), body_digest))
                parts, size = encode_frame_parts(header, wire, {**(meta or {}), SIGNATURE_KEY: sig.hex()})
            if size > self.max_frame_bytes:
                raise FrameError(f"message {tag!r} to {peer} is {size} bytes (limit {self.max_frame_bytes})")
            if chunks is None:
                chunks = chunk_parts(parts[1:], self.chunk_bytes) if len(parts) > 1 else []
                total += size - len(parts[0])
            entries.append((self._mailbox(peer, self.node_id), peer,
                            [{b"q": seq, b"i": 0, b"n": 1, b"z": size, b"d": parts[0],
                              b"p": f"{pub} {len(chunks)}".encode()}]))
            total += len(parts[0])
        shared_entries = [{b"u": pub, b"d": c} for c in chunks or []]

        # MULTI/EXEC (every key is in the job's slot): when a reader's blocked mailbox read wakes on
        # the header, the payload is already there for the shared-stream read pipelined behind it (Redis
        # 7.0 would answer one XREAD over both streams with one of them only); the previous publish
        # is deleted in the same transaction (every receiver has read it: see above)
        self._append([(shared, shared_entries)] + [(key, fields_list) for key, _peer, fields_list in entries],
                     ", ".join(peers), tag, transaction=True, replace=shared)
        for _key, peer, _ in entries:
            self._send_seq[peer] += 1
            self.stats.messages_sent += 1
        self.stats.bytes_sent += total
        return total

    @staticmethod
    def _keep_shared(inbox: Inbox, entries: list) -> None:
        """Hold a sender's published chunks until the header pointing at them is read (only the
        newest publish: each one replaces the one before). Malformed entries are left to the
        header's check, which reads the stream itself when what is held does not add up."""
        for eid, f in entries:
            inbox.shared_last = eid
            if not isinstance(f, dict) or set(f) != SHARED_FIELDS:
                continue
            if f[b"u"] not in inbox.shared:
                inbox.shared = {f[b"u"]: []}
            inbox.shared[f[b"u"]].append(f[b"d"])

    def _fetch_shared(self, inbox: Inbox, ref: Any, head: bytes, size: int, what: str) -> bytes:
        """A published message's header + its payload, read from the sender's shared stream."""
        parts = ref.split(b" ") if isinstance(ref, bytes) else []
        if len(parts) != 2 or not all(p.isdigit() and len(p) <= 12 for p in parts):
            raise FrameError(f"{what}: malformed shared-payload reference {str(ref)[:40]}")
        pub, count = parts[0], int(parts[1])
        if count > size // 1024 + 2:
            raise FrameError(f"{what}: shared payload of {count} chunks for a frame of {size} bytes")
        key = self.keys.shared(self.job_id, self.stage_id, inbox.peer, self.attempt)
        if inbox.shared_key is None:  # from now on read with the mailbox
            inbox.shared_key = key
            self._by_shared[key.encode()] = inbox
        inbox.shared_hint = (count, max(1, -(-(size - len(head)) // max(1, count))))
        held = inbox.shared.pop(pub, [])  # what the reads with the mailbox brought (a prefix)
        if len(held) > count:
            held = []
        data = [head, *held]
        got = sum(len(c) for c in data)
        if len(held) < count:  # the rest (or all, the first time) in one read
            first = b"(" + inbox.shared_last if held else b"-"
            try:
                entries = self.r.xrange(key, min=first, count=count - len(held))
            except redis.ResponseError as exc:
                raise BrokerError(f"job {self.job_id}: Redis refused reading {key}: {exc}") from None
            for eid, f in entries:
                if not isinstance(f, dict) or set(f) != SHARED_FIELDS or f[b"u"] != pub or got > size:
                    break
                inbox.shared_last = max(inbox.shared_last, eid, key=stream_id)
                data.append(f[b"d"])
                got += len(f[b"d"])
        if len(data) != count + 1 or got != size:
            raise FrameError(f"{what}: the shared payload on {key} is missing or replaced ({got} of {size} bytes)")
        return b"".join(data)
