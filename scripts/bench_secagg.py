"""Benchmark one secure-aggregation round: a leaf masking its update, the root summing K of them.

    python scripts/bench_secagg.py [--params N] [--trainers K] [--bits 64|128]
                                   [--csprng hmac_drbg|ctr_drbg] [--method sha512] [--json]

Defaults: N = 3,670,016 (ChatGLM-6B LoRA r=8 on query_key_value: 28 x (8x4096 + 12288x8)),
K = 8, 64 bits, hmac_drbg with sha512.

- leaf_mask_s: one party, K-1 peers: pads for every peer + fixed-point encode + masking
  (`xfed.crypto.mask`), after one warm-up round (worker processes started, buffers warm);
  median of --rounds rounds (leaf_min_s: the fastest). The measured party has peers on both sides (adds and subtracts).
- root_sum_s: the aggregator's `unmask_sum` over K masked dicts, decoding and dividing by the
  total weight. Its inputs are real encodings masked with random words that cancel in the sum
  (the csprng plays no part in the root's work, and this keeps the run short); the decoded
  mean is checked against the plain weighted mean (max_abs_err). Median of at least 5 rounds
  (root_min_s: the fastest).
- drbg_MBps: one DRBG `fill` into a warm buffer, in this process.
- floor_hmac_loop_MBps: the fastest bare Python loop computing V = HMAC(K, V) on 64-byte V
  (sha512) from copies of precomputed inner/outer hash states, output discarded.
- floor_numpy_add_GBps: in-place uint64 add of two warm N-word arrays, GB of one operand per s.
- leaf_ideal_s = pad bytes / (floor MB/s x cores used); the target is leaf_mask_s <= 1.25 x that.
- leaf_cpu_s: CPU seconds of the masking round over this process and its pad workers; next to
  leaf_cpu_ideal_s (pad bytes / floor) it shows the work done, apart from what other load on a
  shared machine does to the wall-clock time.
- leaf_ratio_paired / leaf_cpu_ratio_paired: median over the timed rounds of leaf_mask_s and
  leaf_cpu_s against the ideal at a floor measured just before that round, with the floor loop
  running in as many processes as the pad workers (32 MiB each, started together;
  floor_paired_MBps is their sum). The host's speed swings (one floor loop: 40-70 MB/s from
  second to second), so the best of 3 floor samples taken after the leaf rounds sits near the
  top of that range while a leaf round gets the average: leaf_ideal_s overstates the gap.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from xfed.crypto import (  # noqa: E402
    CtrDrbg,
    HmacDrbg,
    add_into,
    available_cores,
    encode,
    encoded_shape,
    generate_keypair,
    get_pad_workers,
    mask,
    named_group,
    pad_stream,
    shared_secret,
    sub_into,
    unmask_sum,
)

CHATGLM_LORA_PARAMS = 28 * (8 * 4096 + 12288 * 8)
PAIRED_FLOOR_BYTES = 32 << 20  # about 0.5 s of floor loop before each timed leaf round (8 MiB: too noisy)


def tensor_shapes(n_params: int) -> dict[str, tuple[int, ...]]:
    """ChatGLM-6B LoRA shapes for the default size, else 56 tensors of about equal size."""
    if n_params == CHATGLM_LORA_PARAMS:
        shapes = {}
        for layer in range(28):
            prefix = f"transformer.layers.{layer}.attention.query_key_value"
            shapes[f"{prefix}.lora_A.weight"] = (8, 4096)
            shapes[f"{prefix}.lora_B.weight"] = (12288, 8)
        return shapes
    n_tensors = min(56, max(1, n_params))
    bounds = [i * n_params // n_tensors for i in range(n_tensors + 1)]
    return {f"t{i:02d}": (bounds[i + 1] - bounds[i],) for i in range(n_tensors)}


def _rates(n_bytes: int, wall: float, cpu: float) -> tuple[float, float]:
    return n_bytes / wall / 1e6, n_bytes / max(cpu, 1e-9) / 1e6


def floor_hmac_loop_once(n_bytes: int) -> tuple[float, float]:
    """(wall, CPU) MB/s of the bare loop V = HMAC(K, V) (sha512, 64-byte V) from copied inner/outer states."""
    key = os.urandom(64).ljust(128, b"\0")
    inner = hashlib.sha512(key.translate(bytes(x ^ 0x36 for x in range(256)))).copy
    outer = hashlib.sha512(key.translate(bytes(x ^ 0x5C for x in range(256)))).copy
    v = os.urandom(64)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(n_bytes // 64):
        h = inner()
        h.update(v)
        o = outer()
        o.update(h.digest())
        v = o.digest()
    return _rates(n_bytes, time.perf_counter() - t, time.process_time() - c)


def _floor_child(n_bytes: int) -> None:
    """In a subprocess of floor_all_cores: say ready, wait for the go line, print the (wall, CPU) rates."""
    print("ready", flush=True)
    sys.stdin.readline()
    print(json.dumps(floor_hmac_loop_once(n_bytes)), flush=True)


def floor_all_cores(n_proc: int, n_bytes: int) -> tuple[float, float]:
    """(summed wall MB/s, mean CPU MB/s) of the floor loop in n_proc processes started together:
    what the machine gives with every core busy, as it is while the pad workers run."""
    code = (
        f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
        f"import bench_secagg; bench_secagg._floor_child({int(n_bytes)})"
    )
    argv = [sys.executable, "-c", code]
    procs = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(n_proc)]
    for proc in procs:
        proc.stdout.readline()  # imports done: the timed loops start together
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    rates = [json.loads(proc.communicate()[0]) for proc in procs]
    return sum(r[0] for r in rates), statistics.mean(r[1] for r in rates)


def drbg_once(csprng: str, method: str, buf: np.ndarray) -> tuple[float, float]:
    """(wall, CPU) MB/s of one DRBG filling a warm buffer in this process."""
    drbg = HmacDrbg(method, os.urandom(64)) if csprng == "hmac_drbg" else CtrDrbg(os.urandom(64))
    t, c = time.perf_counter(), time.process_time()
    drbg.fill(buf)
    return _rates(buf.nbytes, time.perf_counter() - t, time.process_time() - c)


def drbg_and_floor(csprng: str, method: str, n_bytes: int = 16 << 20, repeats: int = 3) -> dict[str, float]:
    """Best of `repeats` for the DRBG and for the floor loop, interleaved so both see the same load."""
    buf = np.zeros(n_bytes // 8, dtype=np.uint64)  # touched: warm pages
    best = {"drbg": 0.0, "drbg_cpu": 0.0, "floor": 0.0, "floor_cpu": 0.0}
    for _ in range(repeats):
        wall, cpu = drbg_once(csprng, method, buf)
        best["drbg"], best["drbg_cpu"] = max(best["drbg"], wall), max(best["drbg_cpu"], cpu)
        wall, cpu = floor_hmac_loop_once(n_bytes)
        best["floor"], best["floor_cpu"] = max(best["floor"], wall), max(best["floor_cpu"], cpu)
    return best


def floor_numpy_add_gbps(n_words: int) -> float:
    a = np.ones(n_words, dtype=np.uint64)
    b = np.ones(n_words, dtype=np.uint64)
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        np.add(a, b, out=a)
        best = max(best, n_words * 8 / (time.perf_counter() - t) / 1e9)
    return best


def cpu_seconds() -> float:
    """CPU time of this process plus its live pad workers (/proc), to judge work apart from load."""
    total = time.process_time()
    from xfed.crypto import pad_workers

    pool = pad_workers._pool
    if pool is not None:
        tick = os.sysconf("SC_CLK_TCK")
        for worker in pool._workers:
            try:
                fields = open(f"/proc/{worker.proc.pid}/stat").read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
            except (OSError, IndexError, ValueError):
                pass
    return total


def run(args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(0)
    shapes = tensor_shapes(args.params)
    ids = [f"node-{i + 1}" for i in range(args.trainers)]
    me = ids[len(ids) // 2]  # peers below (subtract) and above (add)
    group = named_group(3072)
    keys = {i: generate_keypair(group) for i in ids}
    session = "bench-job/0/0"

    def streams_of(node: str) -> dict:
        return {
            p: pad_stream(shared_secret(group, keys[node][0], keys[p][1]), csprng=args.csprng, method=args.method,
                          session=session, node_a=node, node_b=p)
            for p in ids if p != node
        }

    data = {i: {k: rng.standard_normal(s).astype(np.float32) * 0.02 for k, s in shapes.items()} for i in ids}
    weights = {i: float(rng.integers(100, 1000)) for i in ids}
    wpe = args.bits // 64
    pad_bytes = args.params * wpe * 8 * (args.trainers - 1)

    # Leaf: warm-up round, then timed rounds with the same streams (they advance each round).
    my_streams = streams_of(me)
    workers = args.workers
    if workers is None and args.csprng == "hmac_drbg" and available_cores() >= 2:
        get_pad_workers().warm_up()
    if workers is None:
        from xfed.crypto.otp import _use_processes

        workers_used = _use_processes(list(my_streams.values()), pad_bytes, None)
    else:
        workers_used = 0 if workers <= 1 else workers
    cores_used = max(1, min(workers_used, len(my_streams) * len(next(iter(my_streams.values())).lanes)))
    leaf_times, leaf_cpu, floor_now = [], [], []
    for r in range(args.rounds + 1):
        if r:  # the VM's speed drifts within minutes: a floor sample taken just before each round
            floor_now.append(floor_all_cores(cores_used, PAIRED_FLOOR_BYTES))
        cpu0 = cpu_seconds()
        t = time.perf_counter()
        mask(data[me], bits=args.bits, weight=weights[me], n_parties=args.trainers, self_id=me,
             peer_streams=my_streams, workers=workers)
        if r:
            leaf_times.append(time.perf_counter() - t)
            leaf_cpu.append(cpu_seconds() - cpu0)

    # Root: real encodings + random masks that cancel mod 2^bits (the last party carries -sum).
    masked = []
    mask_sum = {k: np.zeros(encoded_shape(s, args.bits), dtype=np.uint64) for k, s in shapes.items()}
    for n, i in enumerate(ids):
        enc = {k: encode(v, bits=args.bits, weight=weights[i], n_parties=args.trainers, name=k)
               for k, v in data[i].items()}
        if n < len(ids) - 1:
            for k, v in enc.items():
                noise = rng.integers(0, 2**64, size=v.shape, dtype=np.uint64)
                add_into(mask_sum[k], noise, args.bits)
                add_into(v, noise, args.bits)
        else:
            for k, v in enc.items():
                sub_into(v, mask_sum[k], args.bits)
        masked.append(enc)
    total_weight = sum(weights.values())
    out = {k: np.empty(s, dtype=np.float64) for k, s in shapes.items()}
    root_times = []
    result = None
    for r in range(max(args.rounds, 5) + 1):  # cheap: a few more rounds against noise
        t = time.perf_counter()
        result = unmask_sum(masked, bits=args.bits, divide_by=total_weight, out=out)
        if r:
            root_times.append(time.perf_counter() - t)
    err = 0.0
    for k in shapes:
        expect = sum(weights[i] * data[i][k].astype(np.float64) for i in ids) / total_weight
        err = max(err, float(np.abs(result[k] - expect).max(initial=0.0)))

    speeds = drbg_and_floor(args.csprng, args.method)
    floor = speeds["floor"]
    paired = [t * f[0] * 1e6 / pad_bytes for t, f in zip(leaf_times, floor_now, strict=True)]
    paired_cpu = [c * f[1] * 1e6 / pad_bytes for c, f in zip(leaf_cpu, floor_now, strict=True)]
    res = {
        "params": args.params,
        "trainers": args.trainers,
        "bits": args.bits,
        "csprng": args.csprng,
        "method": args.method if args.csprng == "hmac_drbg" else "aes256",
        "leaf_mask_s": round(statistics.median(leaf_times), 4),
        "root_sum_s": round(statistics.median(root_times), 4),
        "drbg_MBps": round(speeds["drbg"], 1),
        "floor_hmac_loop_MBps": round(floor, 1),
        "drbg_cpu_MBps": round(speeds["drbg_cpu"], 1),  # per CPU-second: robust to other load
        "floor_hmac_loop_cpu_MBps": round(speeds["floor_cpu"], 1),
        "floor_numpy_add_GBps": round(floor_numpy_add_gbps(args.params * wpe), 2),
        "pad_bytes": pad_bytes,
        "workers": workers_used,
        "cores": available_cores(),
        "leaf_ideal_s": round(pad_bytes / (floor * 1e6 * cores_used), 4),
        "max_abs_err": err,
        "load_avg_1m": round(os.getloadavg()[0], 2),  # the machine is shared: context for the numbers
        "leaf_cpu_s": round(statistics.median(leaf_cpu), 3),  # parent + workers, all cores
        "leaf_cpu_ideal_s": round(pad_bytes / (speeds["floor_cpu"] * 1e6), 3),  # pad bytes at the CPU floor
        "leaf_ratio_paired": round(statistics.median(paired), 3),  # leaf / ideal at that round's floor
        "leaf_cpu_ratio_paired": round(statistics.median(paired_cpu), 3),
        "floor_paired_MBps": [round(f[0], 1) for f in floor_now],  # all cores together
        "leaf_min_s": round(min(leaf_times), 4),  # least disturbed round on a shared machine
        "root_min_s": round(min(root_times), 4),
        "leaf_rounds_s": [round(x, 4) for x in leaf_times],
        "root_rounds_s": [round(x, 4) for x in root_times],
    }
    if args.dropout_rows:
        from bench_secagg_dropout import rows

        res.update(rows(shapes=shapes, data=data, weights=weights, ids=ids, me=me, bits=args.bits, csprng=args.csprng,
                        method=args.method, rounds=args.rounds, cpu=cpu_seconds))
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=int, default=CHATGLM_LORA_PARAMS)
    p.add_argument("--trainers", type=int, default=8)
    p.add_argument("--bits", type=int, choices=(64, 128), default=64)
    p.add_argument("--csprng", choices=("hmac_drbg", "ctr_drbg"), default="hmac_drbg")
    p.add_argument("--method", default="sha512", help="HMAC_DRBG hash (hmac_drbg only)")
    p.add_argument("--workers", type=int, default=None, help="pad worker processes (default: automatic)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up round")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    p.add_argument("--no-dropout-rows", dest="dropout_rows", action="store_false",
                   help="leave out the dropout-tolerant (secagg) rows (scripts/bench_secagg_dropout.py)")
    args = p.parse_args(argv)
    if args.trainers < 2 or args.params < 1:
        p.error("--trainers must be >= 2 and --params >= 1")
    res = run(args)
    if args.json:
        print(json.dumps(res))
        return 0
    ratio = res["leaf_mask_s"] / res["leaf_ideal_s"]
    ideal = (f"ideal {res['leaf_ideal_s']:.3f} s, ratio {ratio:.2f}; " if res["csprng"] == "hmac_drbg" else "")
    rows = [
        ("params x trainers", f"{res['params']:,} x {res['trainers']}  ({res['bits']}-bit, {res['csprng']}/{res['method']})"),
        ("leaf_mask_s", f"{res['leaf_mask_s']:.3f} s  ({ideal}{res['workers']} worker processes, {res['cores']} cores)"),
        ("leaf CPU time", f"{res['leaf_cpu_s']:.3f} s over all processes (pad bytes at the CPU floor: "
                          f"{res['leaf_cpu_ideal_s']:.3f} s)"),
        ("paired with floor", f"leaf / ideal {res['leaf_ratio_paired']:.2f}, CPU {res['leaf_cpu_ratio_paired']:.2f} "
                              f"(floor on all cores just before each round: {res['floor_paired_MBps']} MB/s)"),
        ("root_sum_s", f"{res['root_sum_s']:.3f} s  (max abs error {res['max_abs_err']:.2e})"),
        ("drbg_MBps", f"{res['drbg_MBps']:.1f} MB/s  ({res['drbg_MBps'] / res['floor_hmac_loop_MBps']:.2f} x floor)"),
        ("floor_hmac_loop_MBps", f"{res['floor_hmac_loop_MBps']:.1f} MB/s"),
        ("per CPU-second", f"drbg {res['drbg_cpu_MBps']:.1f} MB/s, floor {res['floor_hmac_loop_cpu_MBps']:.1f} MB/s "
                           f"({res['drbg_cpu_MBps'] / res['floor_hmac_loop_cpu_MBps']:.2f} x)"),
        ("floor_numpy_add_GBps", f"{res['floor_numpy_add_GBps']:.2f} GB/s"),
        ("pad bytes per round", f"{res['pad_bytes'] / 1e6:.1f} MB"),
        ("load average (1 min)", f"{res['load_avg_1m']:.2f}"),
    ]
    if "sa_setup_s" in res:
        lm = res["leaf_mask_s"]
        rows += [
            ("secagg share setup", f"{res['sa_setup_s']:.3f} s ({res['sa_setup_cpu_s']:.3f} CPU s) per round's keys "
                                   f"(t = {res['sa_threshold']}; target <= 0.5)"),
            ("secagg rejoin keys", f"{res['sa_join_cpu_s']:.3f} CPU s on the restarted node, "
                                   f"{res['sa_join_member_cpu_s']:.3f} CPU s on each member"),
            ("secagg leaf, pads inline", f"{res['sa_leaf_mask_s']:.3f} s vs today's leaf {res['sa_today_leaf_s']:.3f} s in "
                                         f"the same loop: {res['sa_leaf_ratio_paired']:.2f} x wall, "
                                         f"{res['sa_leaf_cpu_ratio']:.2f} x CPU (target <= 1.3)"),
            ("secagg leaf, pads ready", f"{res['sa_leaf_ready_s']:.3f} s encode+add; the add alone {res['sa_pad_add_s']:.3f} s"
                                        f" = {res['sa_pad_add_s'] / res['numpy_add_s']:.2f} x numpy add "
                                        f"({res['numpy_add_s']:.3f} s)"),
            ("secagg root, no dropout", f"{res['sa_root_s']:.3f} s (seeds, self-masks, sum, decode)"),
            ("secagg root, 2 dropped", f"{res['sa_root_2drop_s']:.3f} s; extra (2 keys + their pads) "
                                       f"{res['sa_root_extra_2drop_s']:.3f} s = "
                                       f"{res['sa_root_extra_2drop_s'] / lm:.2f} x leaf_mask_s wall, "
                                       f"{res['sa_root_extra_cpu_vs_leaf']:.2f} x today's leaf CPU (target <= 2)"),
        ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
