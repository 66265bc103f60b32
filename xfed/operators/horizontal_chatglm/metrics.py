"""Per-round metrics: generation scores (exact match, character ROUGE-L), peak memory, and metrics.json."""
from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Any

from .growing_json import EncodedList, dumps, write_atomic


def lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence of two strings (O(len(a)·len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for ch in a:
        cur = [0]
        for j, other in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if ch == other else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l_chars(prediction: str, reference: str) -> float:
    """Character-level ROUGE-L F1 (the usual score for Chinese text, where words are not space-separated)."""
    pred, ref = prediction.strip(), reference.strip()
    if not pred and not ref:
        return 1.0
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def generation_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean exact match (after stripping whitespace) and mean character ROUGE-L F1."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        return {"exact_match": 0.0, "rouge_l": 0.0}
    exact = sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True))
    rouge = sum(rouge_l_chars(p, r) for p, r in zip(predictions, references, strict=True))
    return {"exact_match": exact / len(references), "rouge_l": rouge / len(references)}


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process (and peak CUDA memory when a GPU is in use), in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"peak_rss_mb": round(rss / 1024 if sys.platform != "darwin" else rss / 2**20, 1)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


class MetricsLog:
    """Round records kept in memory and rewritten atomically to `metrics.json` after every round."""

    def __init__(self, path: Path, header: dict[str, Any]):
        self.path = path
        self.header = dict(header)
        self.rounds: list[dict[str, Any]] = []
        self._encoded = EncodedList()  # each record encoded once, not every round (growing_json.py)
        self.started = time.monotonic()

    def eta_seconds(self, done_rounds: int, total_rounds: int) -> float:
        """Remaining time if the rounds left take as long as the rounds so far did on average."""
        if done_rounds <= 0:
            return 0.0
        elapsed = time.monotonic() - self.started
        return round(elapsed / done_rounds * max(total_rounds - done_rounds, 0), 1)

    def add(self, record: dict[str, Any]) -> None:
        self.rounds.append(record)
        self.write()

    def write(self, **extra: Any) -> None:
        self.header.update(extra)
        write_atomic(self.path, dumps(self.header, "rounds", self._encoded.texts(self.rounds)))
