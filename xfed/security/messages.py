"""Ed25519 signatures over every data-plane message, keyed by the identities pinned in fed_conf.json.

`MessageAuth` is what `xfed.broker.channels.Comm` is handed as `auth=` (the broker never imports
this package): the Comm computes the digests of a frame's header and payload (it owns the wire
format) and asks `sign` / `verify` about the transcript below. The transcript lives here, beside
the DH one, so every signed structure xfed defines is in one package, each with its own label.

What a message's signature binds, each field length-prefixed: label, namespace, job, stage,
attempt (the session), channel, sender, receiver, sequence number on that (sender, receiver)
mailbox, the SHA-256 of the frame header (canonical JSON, meta included) and of the payload. A
receiver fills every field but the two digests and the channel from what it expects, not from
what arrived, so a message replayed into another session, mailbox, position or receiver fails.
"""
from __future__ import annotations

from typing import Mapping

from cryptography.exceptions import InvalidSignature

from xfed.errors import SecurityError
from xfed.security.identity import IdentityKey, pinned_keys, transcript

_LABEL = b"xfed/message/v1"
SIGNATURE_BYTES = 64


def message_transcript(*, namespace: str, job: str, stage: int, attempt: int, channel: str, sender: str,
                       receiver: str, seq: int, header_digest: bytes, payload_digest: bytes) -> bytes:
    return transcript(_LABEL, namespace, job, str(stage), str(attempt), channel, sender, receiver, str(seq),
                      header_digest, payload_digest)


class MessageAuth:
    """Signs this node's messages (when it holds its key) and verifies those of pinned senders."""

    def __init__(self, identities: Mapping[str, str], key: IdentityKey | None = None) -> None:
        self.key = key
        self._pinned = pinned_keys(identities)

    @property
    def can_sign(self) -> bool:
        return self.key is not None

    def pinned(self, node: str) -> bool:
        return node in self._pinned

    def sign(self, **fields) -> bytes:
        """This node's signature over one message it sends (`fields`: see message_transcript)."""
        if self.key is None:
            raise SecurityError("this node holds no identity key to sign with")
        if fields["sender"] != self.key.node_id:
            raise SecurityError(f"identity key of {self.key.node_id} cannot sign as {fields['sender']}")
        return self.key.private.sign(message_transcript(**fields))

    def verify(self, signature: bytes, **fields) -> bool:
        """True iff `signature` is the pinned key of fields['sender'] over exactly this message."""
        public = self._pinned.get(fields["sender"])
        if public is None or len(signature) != SIGNATURE_BYTES:
            return False
        try:
            public.verify(signature, message_transcript(**fields))
        except InvalidSignature:
            return False
        return True
