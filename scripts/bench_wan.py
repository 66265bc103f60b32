"""Round time of secure aggregation over emulated WAN links, beside the bandwidth bound.

    python scripts/bench_wan.py [--parties 3,8] [--rtt-ms 0,25,50] [--mbit 100] [--params N]
                                [--rounds R] [--json] [--code DIR]

Every party (the assist trainer and each label trainer, threads of this process with their own
Redis clients) reaches one real redis-server through its own loopback TCP proxy (`LinkProxy`, an
asyncio process) that delays each direction by RTT/2 and paces it to --mbit Mbit/s per party and
direction (shared by the party's connections), with a bounded queue (back-pressure, never unbounded
buffering). A round is what a stage does per round: every label trainer masks N float32 params
(otp, 64 bits, ctr_drbg: pads cheap enough that K parties' masking on this host's cores does not
hide the links) and uploads, the root sums and sends the mean, each party then
reports its `metrics` and `progress` events; parties watch the job for a stop as a stage does
(`StopWatcher` + the Comm's own job check). After a warm-up round the median of --rounds rounds
is reported, a round lasting from its start (a barrier) until the last party holds the mean.

- bound_s: the bandwidth bound, store and forward through Redis at --mbit per link: one upload
  lands, the root's link reads K uploads and writes the mean (K copies when the mean is sent per
  receiver, 1 when it is published once: the `means` column), a trainer reads the mean.
- local_s: the same round with no proxy delay and no pacing (compute + local Redis).
- over_rtt: (round_s - bound_s - local_s) / RTT: what the round adds over the bandwidth bound and
  its compute, in round trips. Data must go trainer -> Redis -> root -> Redis -> trainer, so 2 is
  the floor (the target is <= 2).
- cmds_per_round: Redis commands per round (INFO commandstats over the timed rounds / rounds),
  with the busiest commands in `cmds_top`.

--code DIR imports xfed from DIR instead of this checkout (the same harness on another revision,
e.g. `git archive <rev> | tar -x -C DIR`). Writes only under its own keys of its own server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from local_federation import RedisProcess  # scripts/ is on sys.path: these run as scripts

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parent.parent
_PIECE = 64 << 10       # bytes moved per proxy read
_QUEUE_PIECES = 256     # per direction: at most 16 MiB in flight inside the proxy


# --- the link emulator (runs in its own process) --------------------------------------------------
class _Pace:
    """One direction of one party's link: serialisation at `bps` bytes/s, then `delay` seconds."""

    def __init__(self, bps: float, delay: float) -> None:
        self.bps, self.delay, self.free_at = bps, delay, 0.0

    def due(self, n: int, now: float) -> float:
        if self.bps <= 0:
            return now + self.delay
        self.free_at = max(self.free_at, now) + n / self.bps
        return self.free_at + self.delay


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, pace: _Pace) -> None:
    queue: asyncio.Queue = asyncio.Queue(maxsize=_QUEUE_PIECES)
    loop = asyncio.get_running_loop()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            dst.write(data)
            await dst.drain()
        dst.close()

    sender = asyncio.create_task(deliver())
    try:
        while True:
            data = await src.read(_PIECE)
            if not data:
                break
            await queue.put((pace.due(len(data), loop.time()), data))
    except (ConnectionError, OSError):
        pass
    finally:
        await queue.put((0.0, None))
        try:
            await sender
        except (ConnectionError, OSError):
            pass


def _serve_links(redis_port: int, links: list[tuple[float, float]], conn) -> None:
    """Process body: one listening proxy per (one_way_s, bytes_per_s); sends back the ports."""

    async def main() -> None:
        ports = []
        for one_way, bps in links:
            up, down = _Pace(bps, one_way), _Pace(bps, one_way)

            async def handle(reader, writer, up=up, down=down):
                try:
                    r_reader, r_writer = await asyncio.open_connection("127.0.0.1", redis_port)
                    for sock in (writer.get_extra_info("socket"), r_writer.get_extra_info("socket")):
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    await asyncio.gather(_pipe(reader, r_writer, up), _pipe(r_reader, writer, down))
                except (OSError, asyncio.CancelledError):  # the server went, or the proxy is stopping
                    writer.close()

            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            ports.append(server.sockets[0].getsockname()[1])
        conn.send(ports)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told to stop
        os._exit(0)  # a throwaway process: drop its connections without asyncio's shutdown noise

    asyncio.run(main())


class LinkProxy:
    """Proxies to 127.0.0.1:redis_port, one per link; `ports[i]` is link i's listening port."""

    def __init__(self, redis_port: int, links: list[tuple[float, float]]) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve_links, args=(redis_port, links, child), daemon=True)
        self.proc.start()
        if not self._conn.poll(30):
            raise RuntimeError("link proxy did not start")
        self.ports: list[int] = self._conn.recv()

    def close(self) -> None:
        try:
            self._conn.send("stop")
        except OSError:
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()


# --- the federation round ----------------------------------------------------------------------
def _commands(r) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in r.info("commandstats").items()}


def run_config(server: RedisProcess, parties: int, rtt_ms: float, mbit: float, params: int, rounds: int,
               job: str) -> dict[str, Any]:
    from types import SimpleNamespace

    import numpy as np

    from xfed.aggregation import make_leaf, make_root
    from xfed.broker.connection import connect
    from xfed.broker.jobstore import JobStore
    from xfed.broker.keys import Keys
    from xfed.node.context import StopWatcher
    from xfed.node.events import EventReporter
    from xfed.node.stage_runner import _make_comm

    keys = Keys("xfed-bench-wan")
    trainers = [f"node-{i + 1}" for i in range(parties)]
    nodes = ["assist", *trainers]
    direct = connect(f"127.0.0.1:{server.port}", retry_s=10)
    direct.hset(keys.job(job), mapping={"state": "RUNNING", "stage": "0", "attempt": "0"})
    shaped = rtt_ms > 0 or mbit > 0
    proxy = LinkProxy(server.port, [(rtt_ms / 2000.0, mbit * 1e6 / 8)] * len(nodes)) if shaped else None
    # ctr_drbg: AES pads cost little CPU, so the round shows the links, not K parties' masking on this host's cores
    encryption = {"otp": {"key_bitlength": 64, "key_exchange": {"key_bitlength": 2048, "optimized": True},
                          "csprng": {"name": "ctr_drbg"}}}
    barrier = threading.Barrier(len(nodes))
    starts: list[float] = []
    ends: dict[int, list[float]] = {r: [] for r in range(rounds + 1)}
    errors: list[BaseException] = []
    counted: dict[str, dict[str, int]] = {}
    copies: dict[str, int] = {}
    initial = {"w": np.random.default_rng(0).normal(size=params).astype(np.float32)}
    lock = threading.Lock()

    def party(i: int, node: str) -> None:
        try:
            address = f"127.0.0.1:{proxy.ports[i] if proxy else server.port}"
            r = connect(address, retry_s=10)
            watcher = StopWatcher(JobStore(r, keys), job, 0, 0)
            # the Comm and event reporter exactly as a stage builds them (xfed.node.stage_runner)
            comm = _make_comm(r, keys, SimpleNamespace(job=job, stage=0, node=node, attempt=0, incarnation=0), watcher,
                              SimpleNamespace(identities={}), None)
            comm.timeout = 300.0
            try:
                reporter = EventReporter(r, keys, job, node, 0, 0, background=True)
            except TypeError:  # a revision without background events
                reporter = EventReporter(r, keys, job, node, 0, 0)
            ctx = SimpleNamespace(job_id=job, stage_id=0, attempt=0, node_id=node, trainer_ids=trainers,
                                  assist_id="assist", comm=comm, fed=SimpleNamespace(identities={}),
                                  identity_key=None, report=reporter.report, should_stop=watcher)
            agg = make_root(ctx, encryption) if node == "assist" else make_leaf(ctx, encryption)
            agg.setup()
            if node == "assist":
                copies["mean"] = 1 if getattr(agg, "one_copy_mean", False) else parties
                agg.broadcast_initial(initial)
            else:
                agg.receive_initial()
            for rnd in range(rounds + 1):
                barrier.wait()
                if node == "assist":
                    if rnd == 1:
                        counted["before"] = _commands(direct)
                    with lock:
                        starts.append(time.perf_counter())
                    agg.aggregate(rnd, None, 0.0)
                else:
                    agg.aggregate(rnd, {"w": initial["w"] * (1 + i)}, 1.0)
                with lock:
                    ends[rnd].append(time.perf_counter())
                reporter.report("metrics", {"round": rnd, "loss": 1.0})
                reporter.report("progress", {"round": rnd, "rounds": rounds + 1})
            getattr(reporter, "flush", lambda: None)()  # this config's proxies go away next
            barrier.wait()
            if node == "assist":
                counted["after"] = _commands(direct)
            getattr(watcher, "close", lambda: None)()
        except BaseException as exc:  # noqa: BLE001 - handed back to the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=party, args=(i, n), daemon=True) for i, n in enumerate(nodes)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
    finally:
        if proxy:
            proxy.close()
    if errors:
        raise errors[0]
    times = [max(ends[r]) - starts[r] for r in range(1, rounds + 1)]
    before, after = counted["before"], counted["after"]
    per_round = {k: (after.get(k, 0) - before.get(k, 0)) / rounds for k in after}
    per_round["info"] = per_round.get("info", 0) - 1 / rounds  # the count itself
    per_round = {k: round(v, 1) for k, v in per_round.items() if v > 0}
    return {"parties": parties, "rtt_ms": rtt_ms, "mbit": mbit, "round_s": statistics.median(times),
            "mean_copies": copies["mean"],
            "cmds_per_round": round(sum(per_round.values()), 1),
            "cmds_top": dict(sorted(per_round.items(), key=lambda kv: -kv[1])[:6])}


def _bound_s(parties: int, params: int, mbit: float, mean_copies: int) -> float:
    """Store-and-forward through Redis at `mbit` per link: an upload (8 bytes a param) lands, the
    root's link reads all K, writes the mean (4 bytes a param) `mean_copies` times, a trainer reads it."""
    if mbit <= 0:
        return 0.0
    up, mean = params * 8, params * 4
    return (up + parties * up + mean_copies * mean + mean) * 8 / (mbit * 1e6)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parties", default="3,8")
    ap.add_argument("--rtt-ms", default="0,25,50")
    ap.add_argument("--mbit", type=float, default=100.0)
    ap.add_argument("--params", type=int, default=65_536)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--code", help="import xfed from this directory (another revision)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(args.code).resolve() if args.code else REPO))
    import xfed

    parties = [int(p) for p in args.parties.split(",")]
    rtts = [float(x) for x in args.rtt_ms.split(",")]
    server = RedisProcess.throwaway("xfed-bench-wan-")
    rows: list[dict[str, Any]] = []
    try:
        job = iter(range(1, 10_000))
        for k in parties:
            local = run_config(server, k, 0.0, 0.0, args.params, args.rounds, str(next(job)))
            for rtt in rtts:
                row = run_config(server, k, rtt, args.mbit, args.params, args.rounds, str(next(job)))
                row["local_s"] = local["round_s"]
                row["bound_s"] = _bound_s(k, args.params, args.mbit, row["mean_copies"])
                over = row["round_s"] - row["bound_s"] - row["local_s"]
                row["over_rtt"] = over / (rtt / 1000) if rtt > 0 else None
                rows.append(row)
    finally:
        server.stop()
    load = os.getloadavg()
    summary = {"bench": "wan", "params": args.params, "rounds": args.rounds, "mbit": args.mbit,
               "code": str(Path(xfed.__file__).resolve().parent.parent), "loadavg": [round(x, 2) for x in load],
               "rows": rows}
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"secure aggregation round over emulated links: {args.params} params, otp 64-bit, "
          f"{args.mbit:g} Mbit/s per party, median of {args.rounds} rounds; load {load[0]:.2f}")
    print(f"{'parties':>7} {'rtt_ms':>6} {'round_s':>8} {'bound_s':>8} {'local_s':>8} {'over_rtt':>8} "
          f"{'means':>5} {'cmds/round':>10}  busiest commands per round")
    for row in rows:
        over = "-" if row["over_rtt"] is None else f"{row['over_rtt']:.1f}"
        top = ", ".join(f"{k} {v:g}" for k, v in list(row["cmds_top"].items())[:4])
        print(f"{row['parties']:>7} {row['rtt_ms']:>6g} {row['round_s']:>8.3f} {row['bound_s']:>8.3f} "
              f"{row['local_s']:>8.3f} {over:>8} {row['mean_copies']:>5} {row['cmds_per_round']:>10g}  {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
