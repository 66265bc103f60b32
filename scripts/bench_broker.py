"""Benchmark the Redis data plane: one large payload through a Comm vs raw SET+GET, and an 8-sender gather.

    python scripts/bench_broker.py [--words N] [--senders K] [--reps R] [--chunk-mib C]
                                   [--redis host:port] [--json] [--skip-orchestration]

Defaults: N = 3,670,016 uint64 words (29.4 MB: a masked ChatGLM-6B LoRA r=8 adapter), K = 8,
R = 5 repetitions (median reported, after one warm-up), a redis-server started for the run on a
free loopback port (or --redis to use a running one; the bench writes only under its own keys).

- payload: `Comm.send` + `Comm.recv` of the payload (encode, chunking, XADD, XREAD, XDEL,
  reassembly, validated decode) vs `SET` + `GET` of the same bytes on the same server and
  connection kind. Target: comm_over_raw <= 1.5. Signed arm: the same with identities pinned
  (Ed25519 over the SHA-256 of header and payload, signed by the sender, verified by the receiver
  before decoding): comm_signed_send_recv_s and signed_over_unsigned.
- gather: K senders (each its own client) have sent the payload; the root's `Comm.gather` of all
  K is timed vs K raw GETs of the same bytes (gather_over_raw), and end to end with the K senders
  sending concurrently from threads while the root gathers (gather_e2e_s).
- orchestration: `bench_orchestration` below runs scripts/bench_orchestration.py (the
  scheduler/node part: a job of the built-in operator with 3 nodes, start -> SUCCESSFUL beyond its
  compute; it starts its own server and daemons) and reports its median overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from local_federation import RedisProcess  # scripts/ is on sys.path: these run as scripts

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from xfed.broker.channels import Comm  # noqa: E402
from xfed.broker.connection import connect  # noqa: E402
from xfed.broker.keys import Keys  # noqa: E402


def _median(fn: Callable[[], float], reps: int) -> float:
    fn()  # warm-up: first-touch page faults cost ~10x on these VMs
    return statistics.median(fn() for _ in range(reps))


def _signing_pair(r, keys: Keys, job: str, chunk_bytes: int) -> tuple[Comm, Comm]:
    """Sender and root Comms with both identities pinned (what a node builds from fed_conf.json)."""
    from xfed.security.identity import generate
    from xfed.security.messages import MessageAuth

    ids = {n: generate(n) for n in ("sender", "root")}
    pins = {n: k.public_hex for n, k in ids.items()}
    return (Comm(r, keys, job, 0, "sender", chunk_bytes=chunk_bytes, timeout=120, auth=MessageAuth(pins, ids["sender"])),
            Comm(r, keys, job, 0, "root", timeout=120, auth=MessageAuth(pins, ids["root"])))


def bench_payload(address: str, words: int, reps: int, chunk_bytes: int) -> dict[str, Any]:
    r = connect(address, retry_s=10)
    keys = Keys("xfed-bench")
    rng = np.random.default_rng(0)
    payload = rng.integers(0, 2**64, size=words, dtype=np.uint64)
    raw = payload.tobytes()
    sender = Comm(r, keys, "1", 0, "sender", chunk_bytes=chunk_bytes, timeout=120)
    receiver = Comm(r, keys, "1", 0, "root", timeout=120)
    signed_sender, signed_receiver = _signing_pair(r, keys, "2", chunk_bytes)
    raw_key = "xfed-bench:raw"

    def raw_round() -> float:
        t0 = time.perf_counter()
        r.set(raw_key, raw)
        got = r.get(raw_key)
        dt = time.perf_counter() - t0
        assert len(got) == len(raw)
        return dt

    def comm_round(snd: Comm = sender, rcv: Comm = receiver) -> float:
        t0 = time.perf_counter()
        snd.send("root", "bench", {"masked": payload})
        msg = rcv.recv("sender", "bench")
        dt = time.perf_counter() - t0
        assert msg.tensors["masked"].shape == payload.shape
        return dt

    raw_s = _median(raw_round, reps)
    comm_s = _median(comm_round, reps)
    signed_s = _median(lambda: comm_round(signed_sender, signed_receiver), reps)
    sender.send("root", "bench", {"masked": payload})
    equal = bool(np.array_equal(receiver.recv("sender", "bench").tensors["masked"], payload))
    r.delete(raw_key)
    return {"payload_bytes": len(raw), "raw_set_get_s": raw_s, "comm_send_recv_s": comm_s,
            "comm_over_raw": comm_s / raw_s, "payload_MBps": len(raw) / comm_s / 1e6, "payload_equal": equal,
            "comm_signed_send_recv_s": signed_s, "signed_over_unsigned": signed_s / comm_s}


def bench_gather(address: str, words: int, senders: int, reps: int, chunk_bytes: int) -> dict[str, Any]:
    keys = Keys("xfed-bench")
    names = [f"s{i}" for i in range(senders)]
    clients = {n: connect(address, retry_s=10) for n in names}
    root_r = connect(address, retry_s=10)
    rng = np.random.default_rng(1)
    payload = rng.integers(0, 2**64, size=words, dtype=np.uint64)
    raw = payload.tobytes()
    job = iter(range(10, 10_000))

    def comms(j: int) -> tuple[Comm, dict[str, Comm]]:
        root = Comm(root_r, keys, str(j), 0, "root", timeout=300)
        return root, {n: Comm(clients[n], keys, str(j), 0, n, chunk_bytes=chunk_bytes) for n in names}

    def gather_only() -> float:
        root, leaves = comms(next(job))
        for c in leaves.values():
            c.send("root", "up", {"masked": payload})
        t0 = time.perf_counter()
        got = root.gather(names, "up")
        dt = time.perf_counter() - t0
        assert len(got) == senders
        return dt

    def raw_gets() -> float:
        for n in names:
            clients[n].set(f"xfed-bench:raw:{n}", raw)
        t0 = time.perf_counter()
        for n in names:
            assert len(root_r.get(f"xfed-bench:raw:{n}")) == len(raw)
        return time.perf_counter() - t0

    def end_to_end() -> float:
        root, leaves = comms(next(job))
        threads = [threading.Thread(target=c.send, args=("root", "up", {"masked": payload})) for c in leaves.values()]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        got = root.gather(names, "up")
        dt = time.perf_counter() - t0
        for t in threads:
            t.join()
        assert len(got) == senders
        return dt

    gather_s = _median(gather_only, reps)
    raw_s = _median(raw_gets, reps)
    e2e_s = _median(end_to_end, max(1, reps // 2))
    root_r.delete(*[f"xfed-bench:raw:{n}" for n in names])
    return {"senders": senders, "gather_s": gather_s, "raw_gets_s": raw_s, "gather_over_raw": gather_s / raw_s,
            "gather_e2e_s": e2e_s, "gather_MBps": senders * len(raw) / gather_s / 1e6}


def bench_orchestration(address: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """Orchestration overhead of a 3-node job of the built-in operator (start -> SUCCESSFUL beyond compute).

    Delegates to scripts/bench_orchestration.py (the scheduler/node part), which starts its own
    redis-server and daemons; `address` is not used. None when that script is absent or fails.
    """
    import subprocess

    script = Path(__file__).resolve().parent / "bench_orchestration.py"
    if not script.exists():
        return None
    try:
        run = subprocess.run([sys.executable, str(script), "--json"], capture_output=True, text=True, timeout=600)
        out = json.loads(run.stdout[run.stdout.index("{"):])
    except (subprocess.TimeoutExpired, ValueError) as exc:
        print(f"bench_orchestration.py failed: {exc}", file=sys.stderr)
        return None
    return {"orchestration_overhead_s": out.get("median_overhead_s"), "job_total_s": out.get("median_total_s"),
            "job_compute_s": out.get("median_compute_s")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--words", type=int, default=3_670_016)
    ap.add_argument("--senders", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--chunk-mib", type=float, default=4.0)
    ap.add_argument("--redis", default=None, help="host:port or redis:// URL of a running server")
    ap.add_argument("--json", action="store_true", help="also print one JSON line")
    ap.add_argument("--skip-orchestration", action="store_true")
    args = ap.parse_args(argv)
    server = None if args.redis else RedisProcess.throwaway()
    address = args.redis or server.address
    try:
        chunk = int(args.chunk_mib * (1 << 20))
        result: dict[str, Any] = {"words": args.words, "chunk_bytes": chunk, "reps": args.reps}
        result.update(bench_payload(address, args.words, args.reps, chunk))
        result.update(bench_gather(address, args.words, args.senders, args.reps, chunk))
        orch = None if args.skip_orchestration else bench_orchestration(address, args)
        result.update(orch or {"orchestration": "not measured"})
    finally:
        if server is not None:
            server.stop()
    mb = result["payload_bytes"] / 1e6
    rows = [
        ("payload", f"{mb:.1f} MB"),
        ("raw SET+GET", f"{result['raw_set_get_s'] * 1000:.1f} ms"),
        ("Comm send+recv", f"{result['comm_send_recv_s'] * 1000:.1f} ms  ({result['payload_MBps']:.0f} MB/s)"),
        ("Comm / raw", f"{result['comm_over_raw']:.2f}  (target <= 1.5)"),
        ("Comm send+recv signed", f"{result['comm_signed_send_recv_s'] * 1000:.1f} ms  "
                                  f"({result['signed_over_unsigned']:.2f} x unsigned; identities pinned)"),
        (f"gather from {result['senders']}", f"{result['gather_s'] * 1000:.1f} ms  ({result['gather_MBps']:.0f} MB/s)"),
        (f"raw {result['senders']} GETs", f"{result['raw_gets_s'] * 1000:.1f} ms"),
        ("gather / raw", f"{result['gather_over_raw']:.2f}"),
        ("gather end to end", f"{result['gather_e2e_s'] * 1000:.1f} ms (senders sending concurrently)"),
    ]
    if "orchestration_overhead_s" in result:
        rows.append(("orchestration overhead", f"{result['orchestration_overhead_s']:.2f} s (target <= 2 s)"))
    else:
        rows.append(("orchestration overhead", "not measured (bench_orchestration hook)"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if args.json:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
