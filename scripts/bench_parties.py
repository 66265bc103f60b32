"""Many parties: otp secure-aggregation rounds with K label trainers, protocol only (no training).

    python scripts/bench_parties.py [--parties 3,16,32] [--values 10000] [--rounds 5]
                                    [--neighbours K] [--csprng hmac_drbg|ctr_drbg] [--threads] [--json]

Every party (the assist trainer and K label trainers) is its own process, as in a deployment, with
its own Redis client on one redis-server started for the run (`--threads`: threads of this process
instead, where Python's GIL runs the parties' pad generation one at a time; party processes run at
nice 5, so that the one redis-server, on a machine of its own in a deployment, is not starved by K + 1
busy processes on this machine's cores); they run the real
aggregation classes (`make_leaf`/`make_root`, 64-bit otp, hmac_drbg sha512 unless --csprng) on
`--values` float32 values. A round lasts from the first party leaving the start barrier until the last
party holds the mean; the median of --rounds rounds after one warm-up is reported, with the key exchange (`setup_s`,
once per stage) apart. All K + 1 parties share this machine's cores, so `round_ms` is bounded below by
the parties' total CPU / cores; where each party has a machine of its own, a round costs about one
party's CPU (`party_cpu_ms`: the median over parties of the CPU one party spends in a round, masking
and messaging) plus the root's (`root_cpu_ms`) plus the links. `mask_ms` is the median party's
masking time (wall clock), `pad_pairs` the pad streams per party. `--neighbours K` masks each party
with K neighbours only (`encryption.otp.neighbours`, docs/SECAGG.md) instead of all K-1 others.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from local_federation import RedisProcess  # noqa: E402

from xfed.aggregation import make_leaf, make_root  # noqa: E402
from xfed.broker.channels import Comm  # noqa: E402
from xfed.broker.connection import connect  # noqa: E402
from xfed.broker.keys import Keys  # noqa: E402

_PARTY_NICE = 5


def _party(i: int, node: str, port: int, trainers: list[str], values: int, rounds: int, otp: dict[str, Any],
           job: str, barrier: Any, results: Any) -> None:
    """One party: key exchange, then rounds; puts (node, timings) or (node, error text) on `results`."""
    try:
        if not isinstance(barrier, threading.Barrier):
            # below the redis-server, which has a machine of its own in a deployment: K + 1 busy
            # processes on this machine's few cores must not starve it
            os.nice(_PARTY_NICE)
        keys = Keys("xfed-bench-parties")
        r = connect(f"127.0.0.1:{port}", retry_s=10)
        comm = Comm(r, keys, job, 0, node, timeout=300)
        ctx = SimpleNamespace(job_id=job, stage_id=0, attempt=0, node_id=node, trainer_ids=trainers,
                              assist_id="assist", comm=comm, fed=SimpleNamespace(identities={}),
                              identity_key=None, report=lambda *a: None, should_stop=lambda: False)
        agg = make_root(ctx, {"otp": otp}) if node == "assist" else make_leaf(ctx, {"otp": otp})
        initial = {"w": np.random.default_rng(0).normal(size=values).astype(np.float32)}
        out: dict[str, Any] = {"starts": [], "ends": [], "cpu": [], "mask_ms": [], "pairs": 0}
        barrier.wait()
        t0 = time.perf_counter()
        agg.setup()
        if node == "assist":
            agg.broadcast_initial(initial)
        else:
            agg.receive_initial()
            out["pairs"] = len(agg.streams)
        out["setup"] = time.perf_counter() - t0
        for _ in range(rounds + 1):
            barrier.wait()
            c0, t0 = time.thread_time(), time.perf_counter()  # perf_counter: one clock for every process
            if node == "assist":
                agg.aggregate(len(out["starts"]), None, 0.0)
            else:
                agg.aggregate(len(out["starts"]), {"w": initial["w"] * (1 + i)}, 1.0)
                out["mask_ms"].append(agg.last_round_stats["mask_ms"])
            out["starts"].append(t0)
            out["ends"].append(time.perf_counter())
            out["cpu"].append(time.thread_time() - c0)
        results.put((node, out))
    except BaseException as exc:  # noqa: BLE001 - handed back to the main process
        results.put((node, f"{type(exc).__name__}: {exc}"))
        barrier.abort()


def run(port: int, parties: int, values: int, rounds: int, otp: dict[str, Any], job: str,
        threads: bool = False) -> dict[str, Any]:
    trainers = [f"node-{i + 1:02d}" for i in range(parties)]
    nodes = ["assist", *trainers]
    if threads:
        import queue

        barrier, results, start = threading.Barrier(len(nodes)), queue.Queue(), threading.Thread
    else:  # fork: the children start with xfed and numpy imported, and open their own connections
        mpc = mp.get_context("fork")
        barrier, results, start = mpc.Barrier(len(nodes)), mpc.Queue(), mpc.Process
    workers = [start(target=_party, args=(i, n, port, trainers, values, rounds, otp, job, barrier, results),
                     daemon=True) for i, n in enumerate(nodes)]
    for w in workers:
        w.start()
    got: dict[str, Any] = {}
    try:
        while len(got) < len(nodes):
            node, out = results.get(timeout=900)
            if isinstance(out, str):
                raise RuntimeError(f"{node}: {out}")
            got[node] = out
    finally:
        for w in workers:
            w.join(10)
            if not threads and w.is_alive():
                w.kill()
    timed = range(1, rounds + 1)  # round 0 warms up
    # from the first party out of the barrier (not the root's own start: a root scheduled late would
    # find the uploads waiting and make the round look short) to the last party holding the mean
    times = [max(o["ends"][r] for o in got.values()) - min(o["starts"][r] for o in got.values()) for r in timed]
    leaves = [o for n, o in got.items() if n != "assist"]
    return {"parties": parties, "values": values, "mode": "threads" if threads else "processes",
            "round_ms": round(statistics.median(times) * 1000, 1), "round_min_ms": round(min(times) * 1000, 1),
            "party_cpu_ms": round(statistics.median(statistics.median(o["cpu"][r] for r in timed) for o in leaves)
                                  * 1000, 1),
            "root_cpu_ms": round(statistics.median(got["assist"]["cpu"][r] for r in timed) * 1000, 1),
            "cpu_sum_ms": round(statistics.median(sum(o["cpu"][r] for o in got.values()) for r in timed) * 1000, 1),
            "mask_ms": round(statistics.median(statistics.median(o["mask_ms"][r] for r in timed) for o in leaves), 1),
            "setup_s": round(max(o["setup"] for o in got.values()), 2),
            "pad_pairs": max(o["pairs"] for o in leaves)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parties", default="3,16,32")
    ap.add_argument("--values", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--neighbours", type=int)
    ap.add_argument("--csprng", default="hmac_drbg", choices=["hmac_drbg", "ctr_drbg"])
    ap.add_argument("--threads", action="store_true", help="parties as threads of this process (one GIL)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    otp: dict[str, Any] = {"key_bitlength": 64, "key_exchange": {"key_bitlength": 2048, "optimized": True},
                           "csprng": {"name": args.csprng, "method": "sha512"}}
    if args.neighbours is not None:
        otp["neighbours"] = args.neighbours
    server = RedisProcess.throwaway("xfed-bench-parties-")
    rows = []
    try:
        for j, k in enumerate(int(p) for p in args.parties.split(",")):
            rows.append(run(server.port, k, args.values, args.rounds, otp, str(j + 1), args.threads))
    finally:
        server.stop()
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"bench": "parties", "csprng": args.csprng, "neighbours": args.neighbours,
                          "cores": os.cpu_count(), "loadavg": [round(x, 2) for x in load], "rows": rows}))
        return 0
    print(f"otp protocol-only rounds, {args.values} values, {args.csprng}, neighbours {args.neighbours or 'all'}, "
          f"parties as {'threads' if args.threads else 'processes'} on {os.cpu_count()} cores; load {load[0]:.2f}")
    cols = ["parties", "round_ms", "round_min_ms", "party_cpu_ms", "root_cpu_ms", "cpu_sum_ms", "mask_ms",
            "pad_pairs", "setup_s"]
    print(" ".join(f"{c:>12}" for c in cols))
    for row in rows:
        print(" ".join(f"{row[c]:>12}" for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
