"""Orchestration overhead of a job of the built-in operator with 3 trainers + assist (issue 4 benchmark).

Starts its own redis-server (loopback, free port), a scheduler, an assist trainer and 3 trainers as
real `python xfed.py` processes, runs a warm-up job and then `--jobs` jobs of horizontal_mean. For
each: total = `start` request sent -> job SUCCESSFUL in Redis; compute = the slowest node's own
operator time (setup + rounds, reported in its result); overhead = total - compute (dispatch, child
process start-up and imports, events, stage bookkeeping). Target: overhead <= 2 s. Also times the
CLI round trip `python xfed.py -c start --follow` once. Everything it started is stopped by pid.

    python scripts/bench_orchestration.py [--jobs 3] [--rounds 3] [--dim 100000] [--encryption plain|otp] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
REDIS_SERVER = "/usr/bin/redis-server"
TARGET_S = 2.0
OTP = {"otp": {"key_bitlength": 64, "key_exchange": {"key_bitlength": 2048, "optimized": True},
               "csprng": {"name": "hmac_drbg", "method": "sha256"}}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(folder: Path, address: str, params: dict, trainers: list[str], interval: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    fed = {"fed_info": {"scheduler": {"scheduler": "localhost:0"}, "trainer": {t: "localhost:0" for t in trainers},
                        "assist_trainer": {"assist_trainer": "localhost:0"}},
           "redis_server": address, "redis": {"namespace": "bench_orch"}, "heartbeat_interval": interval}
    (folder / "fed_conf.json").write_text(json.dumps(fed))
    for n in trainers + ["assist_trainer"]:
        ident = "assist_trainer" if n == "assist_trainer" else "label_trainer"
        stage = {"identity": ident, "model_info": {"name": "horizontal_mean"},
                 "output": {"path": "../output/[JOB_ID]/[NODE_ID]"},
                 "train_info": {"train_params": params if ident == "assist_trainer" else {}}}
        (folder / f"trainer_config_{n}.json").write_text(json.dumps([stage]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dim", type=int, default=100_000)
    ap.add_argument("--trainers", type=int, default=3)
    ap.add_argument("--encryption", choices=("plain", "otp"), default="plain")
    ap.add_argument("--interval", type=float, default=1.0, help="heartbeat interval (s)")
    ap.add_argument("--pause", type=float, default=3.0,
                    help="idle seconds between jobs (daemons warm their next stage process meanwhile)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from xfed.broker.connection import connect
    from xfed.broker.keys import Keys
    from xfed.client import Client
    from xfed.config import load_fed_conf

    tmp = Path(tempfile.mkdtemp(prefix="xfed-bench-orch-"))
    port = free_port()
    procs: list[subprocess.Popen] = []
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", XFED_WORK_DIR=str(tmp / "work"),
               XFED_LOG_LEVEL="WARNING")
    redis_proc = subprocess.Popen([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
    trainers = [f"node-{i + 1}" for i in range(args.trainers)]
    params = {"rounds": args.rounds, "dim": args.dim, "weighting": "index",
              "encryption": OTP if args.encryption == "otp" else {"plain": {}}}
    config = tmp / "config"
    write_config(config, f"127.0.0.1:{port}", params, trainers, args.interval)
    result: dict = {"trainers": args.trainers, "rounds": args.rounds, "dim": args.dim,
                    "encryption": args.encryption, "target_overhead_s": TARGET_S}
    try:
        fed = load_fed_conf(config)
        r = connect(fed, retry_s=10)
        keys = Keys(fed.redis.namespace)

        def spawn(*a: str) -> None:
            log = open(tmp / f"{a[-1] if a[0] == '-t' else a[0].strip('-')}.log", "wb")
            procs.append(subprocess.Popen([sys.executable, str(REPO / "xfed.py"), *a, "--config_path", str(config)],
                                          stdout=log, stderr=subprocess.STDOUT, env=env))

        spawn("-s")
        spawn("-a")
        for t in trainers:
            spawn("-t", t)
        client = Client(fed, r, keys)
        client._wait_nodes(list(fed.node_ids), 60)

        def one_job() -> dict:
            t0 = time.perf_counter()
            reply = client.request({"type": "start"})
            if not reply["ok"]:
                raise SystemExit(f"start refused: {reply}")
            job_id = reply["job"]
            while True:
                job = client.jobs.get(job_id)
                if job.state.terminal:
                    break
                time.sleep(0.005)
            total = time.perf_counter() - t0
            if job.state.value != "SUCCESSFUL":
                raise SystemExit(f"job {job_id} {job.state.value}: {job.reason}")
            compute = max(float((s.result or {}).get("seconds", 0.0)) for s in job.nodes.values())
            return {"job": job_id, "total_s": round(total, 3), "compute_s": round(compute, 3),
                    "overhead_s": round(total - compute, 3),
                    "scheduler_view_s": round((job.ended or 0) - (job.started or 0), 3),
                    "phases_s": phases(job)}

        def phases(job) -> dict:
            """Where the time went, from the event timestamps (slowest node per phase)."""
            from xfed.broker.streams import ControlStream

            first: dict[tuple[str, str], float] = {}
            for e in ControlStream(r, keys.job_events(job.job_id)).read("0-0", count=10_000):
                m = e.msg or {}
                tag = m.get("state") if m.get("type") == "status" else m.get("type")
                first.setdefault((m.get("node", ""), tag), m.get("ts", 0.0))
            nodes = job.participants
            def worst(a, b):
                return round(max(first.get((n, b), 0) - (first.get((n, a), 0) if a else job.started) for n in nodes), 3)
            return {"dispatch": worst(None, "starting"), "child_ready": worst("starting", "running"),
                    "operator": worst("running", "done"),
                    "finish": round(job.ended - max(first.get((n, "done"), 0) for n in nodes), 3)}

        time.sleep(args.pause)
        one_job()  # warm-up: page cache, first imports
        jobs = []
        for _ in range(args.jobs):
            time.sleep(args.pause)
            jobs.append(one_job())
        t0 = time.perf_counter()
        cli = subprocess.run([sys.executable, str(REPO / "xfed.py"), "-c", "start", "--follow", "--config_path",
                              str(config)], capture_output=True, text=True, env=env, timeout=300)
        cli_s = time.perf_counter() - t0
        result.update(jobs=jobs, median_total_s=statistics.median(j["total_s"] for j in jobs),
                      median_compute_s=statistics.median(j["compute_s"] for j in jobs),
                      median_overhead_s=statistics.median(j["overhead_s"] for j in jobs),
                      cli_start_follow_s=round(cli_s, 3), cli_rc=cli.returncode)
        result["ok"] = result["median_overhead_s"] <= TARGET_S
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for j in result["jobs"]:
            print(f"job {j['job']}: total {j['total_s']:.3f} s, compute {j['compute_s']:.3f} s, "
                  f"overhead {j['overhead_s']:.3f} s; phases {j['phases_s']}")
        print(f"median overhead {result['median_overhead_s']:.3f} s (target <= {TARGET_S} s); "
              f"CLI start --follow {result['cli_start_follow_s']:.2f} s")
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
