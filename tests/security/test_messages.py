"""Message signatures: the exact transcript verifies; changing any one bound field does not."""
import hashlib

import pytest

from xfed.errors import SecurityError
from xfed.security.identity import dh_transcript, generate
from xfed.security.messages import MessageAuth, message_transcript

FIELDS = dict(namespace="fed", job="7", stage=0, attempt=1, channel="agg/3/down", sender="assist_trainer",
              receiver="node-2", seq=4, header_digest=hashlib.sha256(b"head").digest(),
              payload_digest=hashlib.sha256(b"payload").digest())
CHANGED = [("namespace", "fed2"), ("job", "8"), ("stage", 1), ("attempt", 0), ("channel", "agg/4/down"),
           ("sender", "node-1"), ("receiver", "node-3"), ("seq", 5),
           ("header_digest", hashlib.sha256(b"head2").digest()),
           ("payload_digest", hashlib.sha256(b"payload2").digest())]


@pytest.fixture(scope="module")
def keys():
    return {n: generate(n) for n in ("assist_trainer", "node-1")}


def _auth(keys, me="assist_trainer"):
    return MessageAuth({n: k.public_hex for n, k in keys.items()}, keys[me])


def test_signature_verifies_for_the_exact_transcript(keys):
    sender, receiver = _auth(keys), MessageAuth({"assist_trainer": keys["assist_trainer"].public_hex})
    sig = sender.sign(**FIELDS)
    assert len(sig) == 64 and receiver.verify(sig, **FIELDS)
    assert receiver.pinned("assist_trainer") and not receiver.pinned("node-1") and not receiver.can_sign


def test_every_field_is_bound(keys):
    auth = _auth(keys)
    sig = auth.sign(**FIELDS)
    assert len(CHANGED) == len(FIELDS)  # every field of the transcript is exercised below
    for name, value in CHANGED:
        assert not auth.verify(sig, **{**FIELDS, name: value}), name


def test_fields_cannot_bleed_into_each_other(keys):
    # with plain concatenation "agg/3" + "/down" would equal "agg/3/" + "down"
    auth = _auth(keys)
    a = message_transcript(**{**FIELDS, "namespace": "fed", "job": "17"})
    b = message_transcript(**{**FIELDS, "namespace": "fed1", "job": "7"})
    assert a != b
    assert not auth.verify(auth.sign(**{**FIELDS, "namespace": "fed", "job": "17"}),
                           **{**FIELDS, "namespace": "fed1", "job": "7"})


def test_another_key_a_bad_length_and_an_unpinned_sender_do_not_verify(keys):
    auth = _auth(keys)
    mallory = MessageAuth({"assist_trainer": keys["assist_trainer"].public_hex}, generate("assist_trainer"))
    forged = mallory.sign(**FIELDS)
    assert not auth.verify(forged, **FIELDS)
    assert not auth.verify(auth.sign(**FIELDS)[:63], **FIELDS)
    unpinned = {**FIELDS, "sender": "node-9"}
    assert not auth.verify(b"\0" * 64, **unpinned)


def test_a_node_signs_only_as_itself_and_only_with_a_key(keys):
    with pytest.raises(SecurityError, match="cannot sign as node-1"):
        _auth(keys).sign(**{**FIELDS, "sender": "node-1"})
    with pytest.raises(SecurityError, match="no identity key"):
        MessageAuth({"node-1": keys["node-1"].public_hex}).sign(**FIELDS)


def test_bad_pinned_key_is_a_one_line_error_naming_the_node():
    with pytest.raises(SecurityError, match=r"identities.node-1: not a 32-byte Ed25519"):
        MessageAuth({"node-1": "ab" * 31})


def test_message_and_dh_transcripts_are_domain_separated():
    # each starts with its own length-prefixed label: a DH signature never verifies as a message's
    msg = message_transcript(**FIELDS)
    dh = dh_transcript(session="7/0/1", sender="a", receiver="b", group_bits=2048, value=5)
    assert msg[:19] == (15).to_bytes(4, "big") + b"xfed/message/v1"
    assert dh[:21] == (17).to_bytes(4, "big") + b"xfed/dh-public/v1"
