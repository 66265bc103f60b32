"""Many parties: otp secure-aggregation rounds with K label trainers, protocol only (no training).

    python scripts/bench_parties.py [--parties 3,16,32] [--values 10000] [--rounds 5]
                                    [--neighbours K] [--csprng hmac_drbg|ctr_drbg] [--json]

Every party (the assist trainer and K label trainers) is a thread of this process with its own
Redis client on one redis-server started for the run; they run the real aggregation classes
(`make_leaf`/`make_root`, 64-bit otp, hmac_drbg sha512 unless --csprng) on `--values` float32
values. A round lasts from its start (a barrier) until the last party holds the mean; the median
of --rounds rounds after one warm-up is reported, with the key exchange (`setup_s`, once per
stage) apart. All parties share this machine's cores, so a round's time is about the sum of
every party's masking: `mask_sum_ms` adds up each party's own masking time (wall clock, so it
counts the time the threads wait for each other too), `pad_pairs` is the pad streams per party. `--neighbours K` masks each party with K neighbours only
(`encryption.otp.neighbours`, docs/SECAGG.md) instead of all K-1 others.
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


def run(port: int, parties: int, values: int, rounds: int, otp: dict[str, Any], job: str) -> dict[str, Any]:
    keys = Keys("xfed-bench-parties")
    trainers = [f"node-{i + 1:02d}" for i in range(parties)]
    nodes = ["assist", *trainers]
    barrier = threading.Barrier(len(nodes))
    starts: list[float] = []
    ends: dict[int, list[float]] = {r: [] for r in range(rounds + 1)}
    setup: list[float] = []
    mask_ms: dict[int, list[float]] = {r: [] for r in range(rounds + 1)}
    pairs: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    initial = {"w": np.random.default_rng(0).normal(size=values).astype(np.float32)}

    def party(i: int, node: str) -> None:
        try:
            r = connect(f"127.0.0.1:{port}", retry_s=10)
            comm = Comm(r, keys, job, 0, node, timeout=300)
            ctx = SimpleNamespace(job_id=job, stage_id=0, attempt=0, node_id=node, trainer_ids=trainers,
                                  assist_id="assist", comm=comm, fed=SimpleNamespace(identities={}),
                                  identity_key=None, report=lambda *a: None, should_stop=lambda: False)
            agg = make_root(ctx, {"otp": otp}) if node == "assist" else make_leaf(ctx, {"otp": otp})
            barrier.wait()
            t0 = time.perf_counter()
            agg.setup()
            if node == "assist":
                agg.broadcast_initial(initial)
            else:
                agg.receive_initial()
                with lock:
                    pairs.append(len(agg.streams))
            with lock:
                setup.append(time.perf_counter() - t0)
            for rnd in range(rounds + 1):
                barrier.wait()
                if node == "assist":
                    with lock:
                        starts.append(time.perf_counter())
                    agg.aggregate(rnd, None, 0.0)
                else:
                    agg.aggregate(rnd, {"w": initial["w"] * (1 + i)}, 1.0)
                    with lock:
                        mask_ms[rnd].append(agg.last_round_stats["mask_ms"])
                with lock:
                    ends[rnd].append(time.perf_counter())
        except BaseException as exc:  # noqa: BLE001 - handed back to the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=party, args=(i, n), daemon=True) for i, n in enumerate(nodes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    if errors:
        raise errors[0]
    times = [max(ends[r]) - starts[r] for r in range(1, rounds + 1)]
    return {"parties": parties, "values": values, "round_ms": round(statistics.median(times) * 1000, 1),
            "round_min_ms": round(min(times) * 1000, 1), "setup_s": round(max(setup), 2),
            "mask_sum_ms": round(statistics.median(sum(mask_ms[r]) for r in range(1, rounds + 1)), 1),
            "pad_pairs": max(pairs) if pairs else 0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parties", default="3,16,32")
    ap.add_argument("--values", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--neighbours", type=int)
    ap.add_argument("--csprng", default="hmac_drbg", choices=["hmac_drbg", "ctr_drbg"])
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
            rows.append(run(server.port, k, args.values, args.rounds, otp, str(j + 1)))
    finally:
        server.stop()
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"bench": "parties", "csprng": args.csprng, "neighbours": args.neighbours,
                          "loadavg": [round(x, 2) for x in load], "rows": rows}))
        return 0
    print(f"otp protocol-only rounds, {args.values} values, {args.csprng}, neighbours {args.neighbours or 'all'}; "
          f"load {load[0]:.2f}")
    print(f"{'parties':>7} {'round_ms':>9} {'min_ms':>8} {'mask_sum_ms':>11} {'pad_pairs':>9} {'setup_s':>8}")
    for row in rows:
        print(f"{row['parties']:>7} {row['round_ms']:>9} {row['round_min_ms']:>8} {row['mask_sum_ms']:>11} "
              f"{row['pad_pairs']:>9} {row['setup_s']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
