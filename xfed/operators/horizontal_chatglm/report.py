"""Print the per-round metrics of a job's outputs: `python -m xfed.operators.horizontal_chatglm.report JOB_DIR`.

JOB_DIR is `output.path` with [JOB_ID] filled and [NODE_ID] left as the folder level, i.e. the folder
holding one sub-folder per node, each with its metrics.json. Reads JSON only (no torch).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from xfed.display import cell

COLUMNS = [("node", "node"), ("round", "round"), ("step", "step"), ("train_loss", "train loss"),
           ("eval_loss", "val loss"), ("exact_match", "val EM"), ("rouge_l", "val ROUGE-L"),
           ("bytes_sent", "sent B"), ("bytes_received", "recv B"), ("aggregate_ms", "agg ms"),
           ("peak_rss_mb", "peak MiB"), ("eta_s", "ETA s")]


def load_rounds(job_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for metrics in sorted(job_dir.glob("*/metrics.json")):
        data = json.loads(metrics.read_text())
        rows.extend(data.get("rounds", []))
    return sorted(rows, key=lambda r: (r.get("round", 0), str(r.get("node", ""))))


def format_table(rows: list[dict[str, Any]]) -> str:
    table = [[title for _, title in COLUMNS]] + [[cell(r.get(key)) for key, _ in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in table)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m xfed.operators.horizontal_chatglm.report JOB_DIR", file=sys.stderr)
        return 2
    rows = load_rounds(Path(args[0]))
    if not rows:
        print(f"error: no */metrics.json with rounds under {args[0]}", file=sys.stderr)
        return 2
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
