"""The demo task over the 8 letters a-h (`python make_data.py --out DIR [--seed 0]`), for the P-tuning v2 demo.

The same three ciphers, prompt format, shards and 90/5/5 party split as scripts/make_demo_data.py writes
(docs/DEMO_TASK.md), with the bench's 8-letter maps (scripts/bench_quality.py --task pure8; h->a wraps).
Why: a prefix learns a letter map as a lookup (about one virtual token per cipher and letter), and
26-letter maps are beyond what the tiny model's prefix learns in the demo's few minutes of CPU
training; 8-letter maps are within it (docs/QUALITY.md, P-tuning section).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[4] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench_quality  # noqa: E402  (scripts/ is not a package)
import make_demo_data  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    make_demo_data.LETTERS = bench_quality.PURE8_LETTERS  # words over a-h ...
    make_demo_data.SKILLS = bench_quality.pure8_skills()  # ... and the ciphers wrap inside them
    return make_demo_data.main(["--out", args.out, "--seed", str(args.seed)])


if __name__ == "__main__":
    raise SystemExit(main())
