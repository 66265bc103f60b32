"""Signed node events: with identities pinned, no node can append an event in another node's name.

The job events stream is shared (every node may append to it, see docs/SECURITY.md), so without
signatures a node could claim to be another and, say, report a false `error` that fails the job.
A node signs each event it appends with its identity key; the scheduler, which reads fed_conf.json,
ignores an event claiming a pinned node unless it carries that node's signature over exactly this
event (type, job, stage, attempt, timestamp and every other field, in the federation's namespace).
"""
from __future__ import annotations

import json
from typing import Any, Mapping

from cryptography.exceptions import InvalidSignature

from xfed.errors import SecurityError
from xfed.security.identity import IdentityKey, pinned_keys, transcript

_LABEL = b"xfed/event/v1"
SIGNATURE_FIELD = "sig"


def event_transcript(namespace: str, event: Mapping[str, Any]) -> bytes:
    """What an event's signature covers: the event as canonical JSON (sorted keys), `sig` left out."""
    body = {k: v for k, v in event.items() if k != SIGNATURE_FIELD}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return transcript(_LABEL, namespace, canonical.encode("utf-8"))


def sign_event(key: IdentityKey, namespace: str, event: Mapping[str, Any]) -> str:
    """Hex signature of `key`'s node over `event` as the scheduler will read it back from the stream."""
    if event.get("node") != key.node_id:
        raise SecurityError(f"identity key of {key.node_id} cannot sign an event of {event.get('node')!r}")
    as_read = json.loads(json.dumps(dict(event), allow_nan=False))  # the JSON round trip the reader sees
    return key.private.sign(event_transcript(namespace, as_read)).hex()


class EventVerifier:
    """The scheduler's check of node events against fed_conf.json's pinned identities."""

    def __init__(self, identities: Mapping[str, str]) -> None:
        self._pinned = pinned_keys(identities)

    def problem(self, namespace: str, event: Mapping[str, Any]) -> str | None:
        """None when `event` may be applied, else why not (one line). Unpinned nodes' events pass."""
        node = event.get("node")
        public = self._pinned.get(node) if isinstance(node, str) else None
        if public is None:
            return None
        what = f"{event.get('type')} event in the name of {node}"
        sig = event.get(SIGNATURE_FIELD)
        if not isinstance(sig, str):
            return f"{what}: unsigned, but identities are pinned"
        try:
            public.verify(bytes.fromhex(sig), event_transcript(namespace, event))
        except (ValueError, InvalidSignature):
            return f"{what}: signature does not verify against its pinned identity (forged or altered)"
        return None
