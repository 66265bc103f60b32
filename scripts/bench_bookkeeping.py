"""Benchmark a party's per-round bookkeeping: what it writes to disk after every round, as rounds grow.

    python scripts/bench_bookkeeping.py [--rounds N] [--json]

After each round a label trainer appends its round record to metrics.json, the Trainer's step log and
the round to trainer_state.json's log_history, writes trainer_state.json twice (its output folder and
the round's resume state) and prunes old resume states. Every one of those files holds every round so
far, so encoding them whole made the bookkeeping of round k cost O(k): ~0.8 s a round at round 2000
of a small-model job (py-spy, issue 18 session 8), a job's time growing with the square of its rounds.

Two ways, each over N rounds (default 1000) in a fresh folder, records shaped as a real job's:
- `whole`: what the libraries do, every file encoded whole each round (json.dumps of metrics.json,
  TrainerState.save_to_json) and every checkpoint folder looked at by the prune;
- `incremental`: xfed's (growing_json.py; resume.prune with `pruned_for`).
Reported per way: the mean ms of bookkeeping per round over the first and the last 50 rounds, and the
total seconds. The two ways' final metrics.json and trainer_state.json are compared byte for byte
(`same_files`). No model, no Trainer: only the files (the Trainer's own step is not part of it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import TrainerState

from xfed.operators.horizontal_chatglm import resume
from xfed.operators.horizontal_chatglm.growing_json import save_trainer_state, write_atomic
from xfed.operators.horizontal_chatglm.metrics import MetricsLog

WINDOW = 50


def _records(k: int, rounds: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Trainer's step log and the round record of round k (a 3-party job's, keys as measured)."""
    step = {"epoch": k / 38.0, "grad_norm": 0.004 + 1e-6 * k, "learning_rate": 1.0, "loss": 0.02 + 1e-7 * k, "step": k}
    record = {"aggregate_ms": 39.7, "bytes_received": 196904, "bytes_sent": 196976, "eta_s": 214.5, "mask_ms": 0.0,
              "node": "node-1", "participants": 3, "peak_rss_mb": 500.3, "round": k, "round_s": 0.092,
              "rounds": rounds, "step": k, "train_loss": 0.020055 + 1e-7 * k, "unmask_ms": 0.0, "wait_ms": 28.4}
    return step, record


def _round_state(out: Path, k: int) -> Path:
    """checkpoint-k/ with an adapter file and a resume state (its files stand in for the real ones)."""
    folder = resume.checkpoint_dir(out, k) / resume.RESUME_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder.parent / "adapter_model.safetensors").write_bytes(b"\0" * 1024)
    (folder / resume.TENSORS_FILE).write_bytes(b"\0" * 1024)
    return folder


def run_way(way: str, out: Path, rounds: int) -> dict[str, Any]:
    header = {"node": "node-1", "identity": "label_trainer", "schedule_steps": list(range(1, rounds + 1))}
    metrics = MetricsLog(out / "metrics.json", header)
    state = TrainerState(global_step=0, max_steps=rounds, logging_steps=1, train_batch_size=16)
    times = []
    for k in range(1, rounds + 1):
        step, record = _records(k, rounds)
        folder = _round_state(out, k)
        started = time.perf_counter()
        state.global_step = k
        state.log_history.append(step)
        if way == "whole":
            metrics.rounds.append(record)
            write_atomic(metrics.path, json.dumps({**metrics.header, "rounds": metrics.rounds}, indent=2, sort_keys=True))
            state.log_history.append(dict(record))
            for path in (out / "trainer_state.json", folder / "trainer_state.json"):
                state.save_to_json(str(path.with_suffix(".json.tmp")))
                os.replace(path.with_suffix(".json.tmp"), path)
            resume.prune(out, k)
        else:
            metrics.add(record)
            state.log_history.append(dict(record))
            save_trainer_state(state, out / "trainer_state.json")
            save_trainer_state(state, folder / "trainer_state.json")
            resume.prune(out, k, pruned_for=k - 1)
        times.append(time.perf_counter() - started)
    window = min(WINDOW, rounds)
    return {"first_ms": round(1000 * sum(times[:window]) / window, 2),
            "last_ms": round(1000 * sum(times[-window:]) / window, 2), "total_s": round(sum(times), 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1000)
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        print("bench_bookkeeping: --rounds: must be >= 1", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="xfed-bench-bookkeeping-"))
    try:
        results = {}
        for way in ("whole", "incremental"):
            (root / way).mkdir()
            results[way] = run_way(way, root / way, args.rounds)
        same = all((root / "whole" / name).read_bytes() == (root / "incremental" / name).read_bytes()
                   for name in ("metrics.json", "trainer_state.json"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    row = {"rounds": args.rounds, **{f"{w}_{k}": v for w, r in results.items() for k, v in r.items()},
           "last_ratio": round(results["whole"]["last_ms"] / max(results["incremental"]["last_ms"], 1e-9), 1),
           "same_files": same, "load_avg_1m": round(os.getloadavg()[0], 2)}
    print(f"{'way':<12} {'first 50 ms/round':>18} {'last 50 ms/round':>17} {'total s':>8}")
    for way, r in results.items():
        print(f"{way:<12} {r['first_ms']:>18} {r['last_ms']:>17} {r['total_s']:>8}")
    print(f"rounds {args.rounds}; last-50 ratio whole/incremental {row['last_ratio']}x; files identical: {same}; "
          f"load {row['load_avg_1m']}")
    if args.json:
        print(json.dumps(row))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
