"""Print the per-round metrics of a job's outputs and optionally draw them:
`python -m xfed.operators.horizontal_chatglm.report JOB_DIR [--plot loss.png]` (also `xfed report`).

JOB_DIR is `output.path` with [JOB_ID] filled and [NODE_ID] left as the folder level, i.e. the folder
holding one sub-folder per node, each with its metrics.json. Reads JSON only (no torch).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from xfed.commands import HELP, run
from xfed.display import cell

COLUMNS = [("node", "node"), ("round", "round"), ("step", "step"), ("train_loss", "train loss"),
           ("eval_loss", "val loss"), ("exact_match", "val EM"), ("rouge_l", "val ROUGE-L"),
           ("rouge-1", "rouge-1"), ("rouge-2", "rouge-2"), ("rouge-l", "rouge-l"), ("bleu-4", "bleu-4"),
           ("bytes_sent", "sent B"), ("bytes_received", "recv B"), ("aggregate_ms", "agg ms"),
           ("peak_rss_mb", "peak MiB"), ("eta_s", "ETA s")]


def load_rounds(job_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for metrics in sorted(job_dir.glob("*/metrics.json")):
        data = json.loads(metrics.read_text())
        rows.extend(data.get("rounds", []))
    return sorted(rows, key=lambda r: (r.get("round", 0), str(r.get("node", ""))))


def format_table(rows: list[dict[str, Any]]) -> str:
    # THUDM's scores only when some node computed them (dataset.metrics)
    columns = [(k, t) for k, t in COLUMNS if not k.startswith(("rouge-", "bleu-")) or any(k in r for r in rows)]
    table = [[title for _, title in columns]] + [[cell(r.get(key)) for key, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in table)


USAGE = "usage: python -m xfed.operators.horizontal_chatglm.report JOB_DIR [--plot PNG]"


class _Command(click.Command):
    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_text(USAGE)  # the usage line users already know (and the docs show)


@click.command(cls=_Command, context_settings=HELP, help=__doc__.strip())
@click.argument("job_dir", type=click.Path(path_type=Path))
@click.option("--plot", "png", default=None, metavar="PNG", help="Also draw the curves into PNG.")
def command(job_dir: Path, png: str | None) -> int:
    return report(job_dir, png)


def main(argv: list[str] | None = None) -> int:
    return run(command, argv, "python -m xfed.operators.horizontal_chatglm.report")


def report(job_dir: Path, png: str | None = None) -> int:
    """Print the table (and write the PNG); 2 with a one-line error when there is nothing to show."""
    try:
        rows = load_rounds(job_dir)
    except (OSError, ValueError) as exc:
        print(f"error: {job_dir}: cannot read metrics.json: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print(f"error: no */metrics.json with rounds under {job_dir}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if png:
        from .plot import plot_job

        print(f"plot: {plot_job(job_dir, rows, Path(png))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
