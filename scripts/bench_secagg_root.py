"""The SecAgg root's memory and round time as parties grow, streaming (now) against holding every upload (before).

    python scripts/bench_secagg_root.py [--parties 3,8,16] [--params N] [--rounds R] [--csprng ctr_drbg] [--json]

The root-side rows of the dropout-tolerant protocol (bench_secagg_dropout.py has the leaf and key
rows). Defaults: ChatGLM-6B LoRA size (3,670,016 parameters), 64 bits. One redis-server for the
run; for each N, N label trainers' messages made here and sent before the root's round starts (so the root's
numbers are its own: reading, summing, unmasking; no leaf work in the same process while it runs):
every party uploads, and the last one is *one-sided* (it holds every peer's round keys, nobody holds
its keys), so the root leaves it out after the uploads are in: the streaming root has summed it and
takes it out again (spill file), the old one never adds it. Survivors' uploads are
encode(w·x) + self-mask (their pairwise pads cancel in the sum and the root never touches them, so
they are left out to keep the run short, as in bench_secagg); each survivor's `sa/r/reveal` holds
its real Shamir shares of every survivor's seed. The root regenerates N − 1 self-masks (the
configured csprng: ctr_drbg by default here, so the table shows what streaming changes, not the
DRBG), decodes, and sends the mean: published once (after) or N copies (before).

- round_s: median wall time of `SecAggRoot.aggregate` over --rounds rounds (after a warm-up), the
  two implementations alternating round by round on the same server.
- peak_MB: tracemalloc peak over one more round of each (numpy buffers and Python objects of this
  process; the redis-server's memory is not counted). upload_MB: one upload's bytes.
- sent_MB: bytes the root wrote in the round (ask + mean copies).
The decoded mean is checked against the survivors' plain weighted mean (max_abs_err).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_secagg import CHATGLM_LORA_PARAMS, tensor_shapes  # scripts/ is on sys.path: these run as scripts
from local_federation import RedisProcess

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from xfed.aggregation.base import WEIGHT_KEY, RootBase, check_same_layout, encode, tag_up  # noqa: E402
from xfed.aggregation.secagg import tag_ask, tag_reveal  # noqa: E402
from xfed.aggregation.secagg_keys import OwnRound, indices, round_session  # noqa: E402
from xfed.aggregation.secagg_root import SecAggRoot  # noqa: E402
from xfed.aggregation.secagg_sum import survivors as survivors_of  # noqa: E402
from xfed.aggregation.settings import encryption_of  # noqa: E402
from xfed.broker.channels import Comm  # noqa: E402
from xfed.broker.connection import connect  # noqa: E402
from xfed.broker.keys import Keys  # noqa: E402
from xfed.crypto import unmask_sum  # noqa: E402
from xfed.crypto.fixedpoint import add_into  # noqa: E402
from xfed.crypto.otp import add_pads  # noqa: E402
from xfed.crypto.selfmask import SELF_PEER, self_mask_stream  # noqa: E402
from xfed.crypto.shamir import encode_share  # noqa: E402
from xfed.errors import FrameError, JobError  # noqa: E402


@dataclass
class Ctx:
    """What SecAggRoot reads of a StageContext."""

    job_id: str
    node_id: str
    trainer_ids: list[str]
    comm: Comm
    stage_id: int = 0
    attempt: int = 0
    assist_id: str = "assist"
    fed: Any = None
    identity_key: Any = None
    incarnation: int = 0
    reports: list = field(default_factory=list)

    def report(self, kind: str, data: dict) -> None:
        pass

    def membership(self) -> dict:
        return {}


class GatherAllRoot(SecAggRoot):
    """The root before streaming (xfed up to this change), for comparison: it gathers and holds every
    upload, then `unmask_sum`s the survivors' with the correction, and sends the mean N times."""

    _send_mean = RootBase._send_mean  # one_copy_mean is False: a copy for every member

    def aggregate(self, round_idx: int, own_tensors: Any = None, own_weight: float = 0.0) -> dict[str, np.ndarray]:
        st = self._begin(round_idx)
        got = self._gather_all(round_idx)
        t0 = time.perf_counter()
        reference = got[sorted(got)[0]].tensors
        metas = {}
        for node, msg in got.items():
            check_same_layout(reference, msg.tensors, f"round {round_idx} masked upload from {node}",
                              dtype=np.dtype(np.uint64))
            metas[node] = {"paired": set(msg.meta["paired"]), "public": msg.meta.get("public"),
                           "commit": msg.meta.get("commit")}
        paired = {n: m["paired"] for n, m in metas.items()}
        survivors = survivors_of(paired)
        dropped = [n for n in self.trainers if n not in survivors]
        self.comm.broadcast(survivors, tag_ask(round_idx), meta={"survivors": survivors, "dropped": dropped})
        reveals = self.comm.gather_until(survivors, tag_reveal(round_idx), self.wait_s)
        if len(reveals) < self.t:
            raise JobError(f"round {round_idx}: {len(reveals)} reveals")
        correction = self._correction(round_idx, metas, survivors, dropped, paired, reveals, reference)
        try:
            sums = unmask_sum([got[n].tensors for n in survivors] + [correction], bits=self.settings.bits,
                              frac_bits=self.settings.frac_bits)
        except ValueError as exc:
            raise FrameError(f"round {round_idx}: masked uploads do not fit together: {exc}") from None
        total = float(sums.pop(WEIGHT_KEY))
        st.unmask_ms = round((time.perf_counter() - t0) * 1000, 3)
        self.last_contributors, self.last_dropped = survivors, dropped
        self.active = set(survivors)
        mean = self._finish(round_idx, sums, total, None, 0.0, meta={"contributors": survivors, "dropped": dropped,
                                                                   "epoch": self.epoch, "joined": {}})
        self._end()
        return mean

    def _gather_all(self, round_idx: int) -> dict[str, Any]:
        tag = tag_up(round_idx)
        deadline = time.monotonic() + self.comm.timeout
        got: dict[str, Any] = {}
        while not got:
            if time.monotonic() > deadline:
                raise JobError(f"round {round_idx}: no upload")
            got = self.comm.gather_until(self.trainers, tag, 0.2)
        active = [n for n in self.trainers if n in self.active and n not in got]
        got.update(self.comm.gather_until(active, tag, self.wait_s))
        others = [n for n in self.trainers if n not in got and n not in self.active]
        if others:
            got.update(self.comm.gather_until(others, tag, self.grace_s))
        return got


def _federation(address: str, job: str, ids: list[str], encryption: dict, impl: type) -> tuple[SecAggRoot, dict]:
    keys = Keys("bench")
    comm = Comm(connect(address, retry_s=5), keys, job, 0, "assist", timeout=60, poll_s=0.05)
    ctx = Ctx(job, "assist", ids, comm)
    root = impl(ctx, encryption_of(encryption).otp)
    leaves = {i: Comm(connect(address, retry_s=5), keys, job, 0, i, timeout=60, poll_s=0.05) for i in ids}
    return root, leaves


def _send_round(root: SecAggRoot, leaves: dict[str, Comm], r: int, data: dict, weights: dict) -> None:
    """Every party's upload and every survivor's reveal for round r (the last party is one-sided)."""
    ids = root.trainers
    s, t, x = root.settings, root.t, indices(ids)
    rs = round_session(root.session, r)
    owns = {u: OwnRound.draw(root.group, optimized=True, t=t, members=ids, session=rs, owner=u) for u in ids}
    late = ids[-1]
    survivors = ids[:-1]
    for u in ids:
        paired = [v for v in ids if v != u and (u == late or v != late)]
        enc = encode(data[u], weights[u], u, bits=s.bits, frac_bits=s.frac_bits, n_parties=len(ids), self_id=u,
                     peer_streams={})
        pad = np.zeros(sum(a.size for a in enc.values()), dtype=np.uint64)
        add_pads(pad, bits=s.bits, self_id=u, peer_streams={SELF_PEER: self_mask_stream(
            owns[u].seed, csprng=s.csprng, method=s.method, session=rs, owner=u, lanes=s.lanes)})
        off = 0
        for name in sorted(enc):
            v = enc[name]
            add_into(v, pad[off:off + v.size].reshape(v.shape), s.bits)
            off += v.size
        del pad
        leaves[u].send("assist", tag_up(r), enc, meta={"paired": paired, "public": format(owns[u].public, "x"),
                                                       "commit": owns[u].commit})
        del enc
    for w in survivors:
        seeds = {u: encode_share(owns[u].seed_shares[x[w]]).hex() for u in survivors}
        leaves[w].send("assist", tag_reveal(r), meta={"seeds": seeds, "keys": {}, "publics": {}})


def _mean_error(mean: dict, data: dict, weights: dict, survivors: list[str]) -> float:
    total = sum(weights[u] for u in survivors)
    return max(float(np.abs(mean[n] - sum(weights[u] * data[u][n].astype(np.float64) for u in survivors) / total
                            ).max(initial=0.0)) for n in mean)


def root_rows(address: str, *, parties: list[int], shapes: dict, bits: int, csprng: str, method: str,
              rounds: int) -> list[dict]:
    """One row per (N, implementation): round_s, peak_MB, sent_MB, upload_MB, max_abs_err."""
    out = []
    for n in parties:
        ids = [f"node-{i + 1:02d}" for i in range(n)]
        rng = np.random.default_rng(n)
        data = {u: {k: rng.normal(size=shp).astype(np.float32) for k, shp in shapes.items()} for u in ids}
        weights = {u: float(1 + i % 4) for i, u in enumerate(ids)}
        encryption = {"otp": {"key_bitlength": bits, "csprng": {"name": csprng, "method": method},
                              "key_exchange": {"key_bitlength": 2048},
                              "dropout": {"threshold": n // 2 + 1, "round_timeout_s": 30}}}
        impls = {"before": GatherAllRoot, "after": SecAggRoot}
        feds = {name: _federation(address, f"bench-root-{os.getpid()}-{n}-{name}", ids, encryption, impl)
                for name, impl in impls.items()}
        for root, _ in feds.values():
            root.broadcast_initial({k: np.zeros(shp, np.float32) for k, shp in shapes.items()})
        times: dict[str, list[float]] = {name: [] for name in impls}
        stats: dict[str, dict] = {}
        for r in range(rounds + 2):  # a warm-up, `rounds` timed, one traced
            for name, (root, leaves) in feds.items():
                _send_round(root, leaves, r, data, weights)
                gc.collect()
                traced = r == rounds + 1
                if traced:
                    tracemalloc.start()
                t0 = time.perf_counter()
                mean = root.aggregate(r, None, 0.0)
                wall = time.perf_counter() - t0
                if traced:
                    peak = tracemalloc.get_traced_memory()[1]
                    tracemalloc.stop()
                    stats[name] = {"peak_MB": round(peak / 1e6, 1),
                                   "sent_MB": round(root.last_round_stats["bytes_sent"] / 1e6, 2),
                                   "max_abs_err": _mean_error(mean, data, weights, ids[:-1])}
                    if root.last_contributors != ids[:-1]:
                        raise AssertionError(f"bench: contributors {root.last_contributors}")
                elif r > 0:
                    times[name].append(wall)
                del mean
        upload_mb = (sum(int(np.prod(shp)) for shp in shapes.values()) + 1) * (bits // 8) / 1e6
        for name in impls:
            out.append({"parties": n, "impl": name, "round_s": round(statistics.median(times[name]), 3),
                        "upload_MB": round(upload_mb, 1), **stats[name]})
        for root, leaves in feds.values():
            root.comm.r.flushdb()  # this run's own server: the leaves' unread means and asks
            for c in [root.comm, *leaves.values()]:
                c.r.close()
        del feds, data
        gc.collect()
    return out


def table(rows: list[dict]) -> str:
    lines = ["| parties | root | round s | peak MB | peak / upload | sent MB |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['parties']} | {row['impl']} | {row['round_s']:.3f} | {row['peak_MB']:.1f} | "
                     f"{row['peak_MB'] / row['upload_MB']:.1f} | {row['sent_MB']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parties", default="3,8,16", help="comma-separated numbers of label trainers")
    p.add_argument("--params", type=int, default=CHATGLM_LORA_PARAMS)
    p.add_argument("--bits", type=int, choices=(64, 128), default=64)
    p.add_argument("--csprng", choices=("hmac_drbg", "ctr_drbg"), default="ctr_drbg")
    p.add_argument("--method", default="sha512", help="HMAC_DRBG hash (hmac_drbg only)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per implementation after one warm-up")
    p.add_argument("--redis", default=None, help="host:port of a running server (default: one started for the run)")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    args = p.parse_args(argv)
    parties = [int(x) for x in args.parties.split(",")]
    if min(parties) < 3 or args.params < 1 or args.rounds < 1:
        p.error("--parties must each be >= 3 (one is left out), --params and --rounds >= 1")
    server = None if args.redis else RedisProcess.throwaway()
    load_before = [round(x, 2) for x in os.getloadavg()]
    try:
        rows = root_rows(args.redis or server.address, parties=parties, shapes=tensor_shapes(args.params),
                         bits=args.bits, csprng=args.csprng, method=args.method, rounds=args.rounds)
    finally:
        if server is not None:
            server.stop()
    res = {"params": args.params, "bits": args.bits, "csprng": args.csprng, "rounds": args.rounds,
           "load_avg_before": load_before, "load_avg_after": [round(x, 2) for x in os.getloadavg()],
           "cores": os.cpu_count(), "rows": rows}
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"SecAgg root, {args.params:,} parameters ({rows[0]['upload_MB']:.1f} MB per upload), {args.bits}-bit, "
          f"{args.csprng}; one party left out after the uploads (one-sided)")
    print(table(rows))
    print(f"load average before {load_before}, after {res['load_avg_after']} ({res['cores']} cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
