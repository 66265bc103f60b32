"""Fuzz the mailbox: random entries injected into a node's stream -> FrameError or ChannelTimeout, never more."""

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xfed.broker.channels import Comm
from xfed.broker.connection import connect
from xfed.broker.frames import FrameHeader, encode_frame
from xfed.broker.keys import Keys
from xfed.errors import ChannelTimeout, FrameError

pytestmark = pytest.mark.integration
_jobs = itertools.count(1)
VALID = encode_frame(FrameHeader(sender="evil", receiver="b", job="1", stage=0, channel="x", seq=0),
                     {"w": np.arange(4, dtype=np.float32)})

_values = st.one_of(st.binary(max_size=40), st.integers(-5, 2**70).map(lambda v: str(v).encode()),
                    st.sampled_from([b"0", b"1", b"2", b"-1", b"", b"99999999999999999999", VALID, VALID[:30]]))
_entry = st.dictionaries(st.sampled_from([b"q", b"i", b"n", b"z", b"d", b"x"]), _values, min_size=1, max_size=6)


@pytest.fixture(scope="module")
def r(redis_session):
    client = connect(redis_session.address, retry_s=5)
    yield client
    client.close()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(entries=st.lists(_entry, min_size=1, max_size=3))
def test_injected_entries_only_raise_typed_errors(r, entries):
    keys = Keys("fuzz")
    job = str(next(_jobs))
    for fields in entries:
        r.xadd(keys.mailbox(job, 0, "b", "evil"), fields)
    comm = Comm(r, keys, job, 0, "b", poll_s=0.01, max_frame_bytes=1 << 20)
    with pytest.raises((FrameError, ChannelTimeout)):
        comm.recv("evil", "x", timeout=0.05)
