"""Signed node events: the scheduler's check accepts a node's own event and nothing altered or forged."""
import pytest

from xfed.broker.streams import decode_message, encode_message
from xfed.errors import SecurityError
from xfed.security.events import EventVerifier, event_transcript, sign_event
from xfed.security.identity import generate

KEYS = {n: generate(n) for n in ("node-1", "node-2")}
PINS = {n: k.public_hex for n, k in KEYS.items()}
EVENT = {"type": "error", "job": "7", "node": "node-2", "stage": 0, "attempt": 1, "ts": 1700000000.25,
         "message": "CUDA out of memory", "data": {"x": [1, 2.5, None]}}


def _signed(event=EVENT, key=KEYS["node-2"]):
    return {**event, "sig": sign_event(key, "fed", event)}


def test_an_event_signed_by_its_node_passes_after_the_stream_round_trip():
    read_back = decode_message(encode_message(_signed()))
    assert EventVerifier(PINS).problem("fed", read_back) is None


@pytest.mark.parametrize("field,value", [("type", "done"), ("job", "8"), ("node", "node-1"), ("stage", 1),
                                         ("attempt", 0), ("ts", 1700000001.5), ("message", "other"),
                                         ("data", {"x": [1, 2.5]})])
def test_any_changed_field_is_refused(field, value):
    problem = EventVerifier(PINS).problem("fed", {**_signed(), field: value})
    assert "signature does not verify against its pinned identity" in problem


def test_forged_events_are_refused_naming_the_claimed_node():
    check = EventVerifier(PINS)
    assert check.problem("fed", EVENT) == "error event in the name of node-2: unsigned, but identities are pinned"
    # node-1 signs with its own key an event in node-2's name
    forged = {**EVENT, "sig": KEYS["node-1"].private.sign(event_transcript("fed", EVENT)).hex()}
    assert "in the name of node-2: signature does not verify" in check.problem("fed", forged)
    assert "does not verify" in check.problem("fed2", _signed())           # another federation's event
    assert "does not verify" in check.problem("fed", {**EVENT, "sig": "zz"})


def test_unpinned_nodes_and_a_node_signing_for_another_are_handled():
    assert EventVerifier({"node-1": PINS["node-1"]}).problem("fed", EVENT) is None   # node-2 not pinned
    with pytest.raises(SecurityError, match="cannot sign an event of 'node-2'"):
        sign_event(KEYS["node-1"], "fed", EVENT)
