"""Pad generation in worker processes gives exactly the in-process pads; dead or slow workers fail cleanly."""

import numpy as np
import pytest

from xfed.crypto import mask, pad_stream, pad_words, shutdown_pad_workers
from xfed.crypto.pad_workers import PadWorkers, decode_state, encode_state

pytestmark = pytest.mark.integration  # starts worker processes


def _streams(ids, csprng):
    return {
        me: {p: pad_stream(bytes(range(64)) + "".join(sorted((me, p))).encode(), csprng=csprng, session="j/0/0",
                           node_a=me, node_b=p) for p in ids if p != me}
        for me in ids
    }


@pytest.fixture(autouse=True)
def _stop_pool():
    yield
    shutdown_pad_workers()


@pytest.mark.parametrize("bits,csprng", [(64, "hmac_drbg"), (128, "ctr_drbg")])
def test_worker_processes_produce_the_in_process_masks(bits, csprng):
    ids = ["n1", "n2", "n3", "n4"]
    local, pooled = _streams(ids, csprng), _streams(ids, csprng)
    rng = np.random.default_rng(1)
    values = {"a": rng.normal(size=(300, 7)), "b": rng.normal(size=()), "c": np.zeros((0, 2))}
    for _round in range(2):
        want = mask(values, bits=bits, n_parties=4, self_id="n2", peer_streams=local["n2"], workers=0)
        got = mask(values, bits=bits, n_parties=4, self_id="n2", peer_streams=pooled["n2"], workers=2)
        for k in values:
            assert np.array_equal(want[k], got[k])
    # Both copies of every stream are at the same place afterwards.
    for p in local["n2"]:
        assert np.array_equal(pad_words(local["n2"][p], 5), pad_words(pooled["n2"][p], 5))


def test_state_round_trips_through_json_data():
    s = pad_stream(bytes(64), session="s", node_a="a", node_b="b")
    for drbg in (s.lanes[0], pad_stream(bytes(64), csprng="ctr_drbg", session="s", node_a="a", node_b="b").lanes[0]):
        copy = decode_state(encode_state(drbg))
        assert copy.generate(40) == drbg.generate(40)


def test_dead_worker_fails_the_call_and_leaves_the_stream_unmoved():
    pool = PadWorkers(1)
    try:
        pool.warm_up(timeout=60)
        stream = pad_stream(bytes(64), session="s", node_a="a", node_b="b", lanes=1)
        reference = pad_stream(bytes(64), session="s", node_a="a", node_b="b", lanes=1)
        pool._workers[0].proc.kill()  # our own child, by its Popen handle
        pool._workers[0].proc.wait(timeout=10)
        with pytest.raises((RuntimeError, OSError)):
            pool.fill([(stream.lanes[0], 0, 1000)], 1000, timeout=30)
        assert pool.broken
        assert np.array_equal(pad_words(stream, 4), pad_words(reference, 4))
    finally:
        pool.shutdown()


def test_slow_generation_times_out_instead_of_hanging():
    pool = PadWorkers(1)
    try:
        stream = pad_stream(bytes(64), session="s", node_a="a", node_b="b", lanes=1)
        n = 1 << 24  # 128 MB of HMAC_DRBG output: seconds of work
        with pytest.raises(TimeoutError, match="did not finish"):
            pool.fill([(stream.lanes[0], 0, n)], n, timeout=0.5)
        assert pool.broken
    finally:
        pool.shutdown()


def test_a_forked_child_builds_its_own_pool_instead_of_using_the_parents():
    from xfed.crypto import get_pad_workers

    inherited = get_pad_workers(1)
    try:
        inherited.owner_pid = -1  # what a fork child sees: a pool some other process owns
        fresh = get_pad_workers(1)
        assert fresh is not inherited
        assert all(w.proc.poll() is None for w in inherited._workers)  # not stopped by the child
    finally:
        inherited.owner_pid = __import__("os").getpid()
        inherited.shutdown()


def test_mask_falls_back_to_in_process_pads_when_the_workers_die():
    from xfed.crypto import get_pad_workers

    ids = ["n1", "n2", "n3"]
    local, pooled = _streams(ids, "hmac_drbg"), _streams(ids, "hmac_drbg")
    values = {"a": np.linspace(-1, 1, 500)}
    pool = get_pad_workers(2)
    for worker in pool._workers:
        worker.proc.kill()  # our own children, by their Popen handles
        worker.proc.wait(timeout=10)
    with pytest.warns(UserWarning, match="generating pads in this process"):
        got = mask(values, n_parties=3, self_id="n1", peer_streams=pooled["n1"], workers=2)
    want = mask(values, n_parties=3, self_id="n1", peer_streams=local["n1"], workers=0)
    assert np.array_equal(got["a"], want["a"])
    # The next round gets a fresh pool and still agrees.
    got2 = mask(values, n_parties=3, self_id="n1", peer_streams=pooled["n1"], workers=2)
    want2 = mask(values, n_parties=3, self_id="n1", peer_streams=local["n1"], workers=0)
    assert np.array_equal(got2["a"], want2["a"])


def test_warm_up_reaches_every_worker():
    pool = PadWorkers(2)
    try:
        pool.warm_up(timeout=60)
        replies = pool._run([{"op": "ping"}, {"op": "ping"}], timeout=60)
        assert sorted(r["pid"] for r in replies) == sorted(w.proc.pid for w in pool._workers)
    finally:
        pool.shutdown()


def test_worker_refuses_bad_tasks_with_an_error_reply(tmp_path):
    import json
    import subprocess
    import sys

    path = tmp_path / "buf"
    path.write_bytes(bytes(64))
    state = encode_state(pad_stream(bytes(64), session="s", node_a="a", node_b="b", lanes=1).lanes[0])
    tasks = [
        {"op": "explode"},
        {"op": "fill", "path": str(path), "size": 64, "state": state, "offset": 4, "count": 8},  # past the end
        {"op": "fill", "path": str(path), "size": 64, "state": {"kind": "rot13"}, "offset": 0, "count": 1},
        {"op": "fill", "path": str(path), "size": 64, "state": state, "offset": 0, "count": 8},
    ]
    proc = subprocess.run([sys.executable, "-m", "xfed.crypto.pad_worker_main"], check=True, timeout=60,
                          input="".join(json.dumps(t) + "\n" for t in tasks).encode(), capture_output=True)
    replies = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["ok"] for r in replies] == [False, False, False, True]
    assert "unknown op" in replies[0]["error"] and "outside" in replies[1]["error"]
    want = pad_words(pad_stream(bytes(64), session="s", node_a="a", node_b="b", lanes=1), 8)
    assert np.frombuffer(path.read_bytes(), dtype="<u8").tolist() == want.tolist()
