"""The one strict JSON reader (network messages, frame headers, config files)."""
import json

import pytest

from xfed import strict_json
from xfed.broker.streams import decode_message
from xfed.errors import FrameError
from xfed.strict_json import StrictJSONError


def test_round_trip_and_strictness():
    msg = {"cmd": "run", "stage": 3, "nested": {"a": [1, 2.5, None, True]}}
    assert strict_json.parse(json.dumps(msg).encode()) == msg
    for bad in (b"{", b'{"a": NaN}', b'{"a":1,"a":2}', b"\xff\xfe", b"[" * 5000 + b"]" * 5000,
                b"[" * 40 + b"]" * 40):
        with pytest.raises(StrictJSONError):
            strict_json.parse(bad)
    with pytest.raises(StrictJSONError, match="exceeds the limit"):
        strict_json.parse(b"{}" + b" " * 100, max_bytes=10)


@pytest.mark.parametrize("raw,match", [
    (b'{"type": "stop_job", "job": "1", "reason": "a", "reason": "b"}', "duplicate key 'reason'"),
    (b'{"type": "stop_job", "job": "1", "reason": "r", "x": ' + b"[" * 40 + b"]" * 40 + b"}", "nested deeper"),
])
def test_stream_messages_get_the_duplicate_and_depth_checks(raw, match):
    """They used to be read by a third parser without these checks (the last duplicate won)."""
    with pytest.raises(FrameError, match=match):
        decode_message(raw, where="test")
