"""Property: whatever lands in a trainer's mailbox, horizontal_mean ends with a typed XfedError, never a hang.

Valid entries from a real Comm are mutated (truncated, bytes flipped, counts/sizes/sequence changed,
fields dropped or retyped) and injected where the trainer waits for its first message.
"""
from __future__ import annotations

import itertools
import time
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xfed.broker.channels import Comm
from xfed.broker.keys import Keys
from xfed.errors import XfedError
from xfed.node.context import StageContext
from xfed.operators.horizontal_mean import run
from xfed.operators.horizontal_mean.operator import PARAMS_TAG

KEYS = Keys("fz")
_ids = itertools.count(1)


def valid_entries(r) -> list[dict]:
    """The raw stream entries of a real params message from the assist trainer to node-1."""
    Comm(r, KEYS, "0", 0, "assist_trainer").send("node-1", PARAMS_TAG, meta={"rounds": 1, "dim": 4})
    return [f for _, f in r.xrange(KEYS.mailbox("0", 0, "node-1", "assist_trainer"))]


mutation = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 400)),
    st.tuples(st.just("flip"), st.integers(0, 400), st.integers(1, 255)),
    st.tuples(st.just("field"), st.sampled_from([b"q", b"i", b"n", b"z"]),
              st.sampled_from([b"-1", b"x", b"99999999999", b"1", b"2", b"", b"0.5"])),
    st.tuples(st.just("drop"), st.sampled_from([b"q", b"i", b"n", b"z", b"d"])),
    st.tuples(st.just("extra"), st.binary(min_size=1, max_size=5)),
    st.tuples(st.just("random"), st.binary(max_size=200)),
)


def mutate(fields: dict, m: tuple) -> dict:
    f = dict(fields)
    if m[0] == "truncate":
        f[b"d"] = f[b"d"][: m[1] % max(1, len(f[b"d"]))]
    elif m[0] == "flip":
        d = bytearray(f[b"d"])
        d[m[1] % len(d)] ^= m[2]
        f[b"d"] = bytes(d)
    elif m[0] == "field":
        f[m[1]] = m[2]
    elif m[0] == "drop":
        f.pop(m[1])
    elif m[0] == "extra":
        f[b"x" + m[1]] = b"1"
    else:
        f = {b"d": m[1]}
    return f or {b"d": b""}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3] / "tests" / "conftest.py"
    spec = importlib.util.spec_from_file_location("xfed_tests_root_conftest_fz", root)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    srv = mod.RedisServer(dir=tmp_path_factory.mktemp("redis-fz"))
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.integration
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=mutation)
def test_mutated_frames_end_in_a_typed_error_quickly(server, tmp_path, m):
    r = server.client()
    job = str(next(_ids))
    entry = mutate(valid_entries(r)[0], m)
    r.xadd(KEYS.mailbox(job, 0, "node-1", "assist_trainer"), entry)
    stage = SimpleNamespace(identity="label_trainer", train_info=SimpleNamespace(train_params={"timeout_s": 1.0}),
                            output=None)
    ctx = StageContext(job_id=job, stage_id=0, attempt=0, node_id="node-1", identity="label_trainer", stage=stage,
                       fed=SimpleNamespace(identities={}), trainer_ids=["node-1", "node-2"],
                       assist_id="assist_trainer", comm=Comm(r, KEYS, job, 0, "node-1", timeout=1.0),
                       work_dir=tmp_path)
    t0 = time.monotonic()
    with pytest.raises(XfedError):
        run(ctx)
    assert time.monotonic() - t0 < 5
