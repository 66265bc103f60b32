"""A job's curves as one PNG: train loss (every step and each round), validation loss, and the validation
metrics, one line per node, against the round. Reads metrics.json and trainer_state.json only."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# scores shown in the metrics panel when a node has them; THUDM's are 0..100, ours 0..1 (own axis)
UNIT_SCORES = ("exact_match", "rouge_l")
THUDM_SCORES = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")


def _step_losses(node_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every logged optimizer step in the node's trainer_state.json, if it has one."""
    path = node_dir / "trainer_state.json"
    if not path.is_file():
        return []
    try:
        history = json.loads(path.read_text()).get("log_history") or []
    except (OSError, ValueError):
        return []
    return [(int(e["step"]), float(e["loss"])) for e in history
            if isinstance(e, dict) and "loss" in e and "round" not in e and "step" in e]


def plot_job(job_dir: Path, rows: list[dict[str, Any]], png: Path) -> Path:
    """Write the figure to `png` (its folder is created); returns the path."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    nodes = sorted({str(r.get("node")) for r in rows})
    by_node = {n: sorted((r for r in rows if str(r.get("node")) == n), key=lambda r: r.get("round", 0)) for n in nodes}
    has_thudm = any(k in r for r in rows for k in THUDM_SCORES)
    from matplotlib.ticker import MaxNLocator

    if has_thudm:
        fig, grid = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
        axes = list(grid.flat)
    else:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
        axes = list(axes)
    colors = {n: f"C{i % 10}" for i, n in enumerate(nodes)}
    ax_train, ax_val, ax_unit = axes[0], axes[1], axes[2]

    for node, recs in by_node.items():
        c = colors[node]
        rounds = [r for r in recs if "train_loss" in r]
        if rounds:
            ax_train.plot([r["round"] for r in rounds], [r["train_loss"] for r in rounds], "o-", color=c, label=node)
        steps = _step_losses(job_dir / node)
        step_of_round = [(r["round"], r["step"]) for r in recs if "step" in r]
        if steps and step_of_round:  # per-step losses on the round axis: step s lies in round (s / round's end step)
            xs = [_round_position(s, step_of_round) for s, _ in steps]
            ax_train.plot(xs, [v for _, v in steps], "-", color=c, alpha=0.3, linewidth=1)
        val = [r for r in recs if "eval_loss" in r]
        if val:
            ax_val.plot([r["round"] for r in val], [r["eval_loss"] for r in val], "o-", color=c, label=node)
        for key, style in zip(UNIT_SCORES, ("o-", "s--"), strict=True):
            pts = [r for r in recs if key in r]
            if pts:
                ax_unit.plot([r["round"] for r in pts], [r[key] for r in pts], style, color=c, label=f"{node} {key}")
        if has_thudm:
            for key, style in zip(THUDM_SCORES, ("o-", "s--", "^-.", "d:"), strict=True):
                pts = [r for r in recs if key in r]
                if pts:
                    axes[3].plot([r["round"] for r in pts], [r[key] for r in pts], style, color=c,
                                 label=f"{node} {key}")

    ax_train.set_title("train loss (dots: round mean; line: every step)")
    ax_val.set_title("validation loss")
    ax_unit.set_title("validation exact match / char ROUGE-L")
    ax_unit.set_ylim(-0.05, 1.05)
    if has_thudm:
        axes[3].set_title("THUDM ptuning metrics (0..100)")
    for ax in axes:
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    fig.suptitle(f"xfed job {job_dir.name}: {len(nodes)} node(s)")
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def _round_position(step: int, ends: list[tuple[int, int]]) -> float:
    """Where optimizer step `step` lies on the round axis, given (round, last step of the round) pairs."""
    prev_round, prev_step = 0, 0
    for round_idx, end in sorted(ends):
        if step <= end:
            span = max(end - prev_step, 1)
            return prev_round + (round_idx - prev_round) * (step - prev_step) / span
        prev_round, prev_step = round_idx, end
    return float(prev_round)
