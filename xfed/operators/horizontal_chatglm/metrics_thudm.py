"""THUDM's P-tuning evaluation scores, computed the way ChatGLM-6B's `ptuning/main.py` computes them.

For each (prediction, reference): ROUGE-1/2/L F1 from `rouge_chinese.Rouge` on the two texts segmented
by `jieba.cut` and joined by spaces; BLEU-4 from `nltk`'s `sentence_bleu` over *characters* (THUDM passes
`list(label)` and `list(pred)`) with `SmoothingFunction().method3`. Each score is ×100 and rounded to 4
places per example, then averaged over the examples, as THUDM's `compute_metrics` does.

One difference, taken from ChatGLM2-6B's main.py: an empty prediction or reference scores 0 for the
three ROUGE values (rouge_chinese raises on an empty text, which would end THUDM-6B's evaluation).

Nothing here downloads data: jieba ships its dictionary, rouge_chinese is pure Python and nltk's
`sentence_bleu` needs no corpus. The libraries are imported on first use only.
"""
from __future__ import annotations

import logging
from typing import Any

THUDM_METRICS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")
# what `dataset.metrics` may list: THUDM's four plus our own (exact match 0..1, character ROUGE-L 0..1)
KNOWN_METRICS = (*THUDM_METRICS, "exact_match", "rouge_l")
DEFAULT_METRICS = ("exact_match", "rouge_l")


def parse_metrics(value: str | list[str] | None, where: str) -> list[str]:
    """A metrics list (or comma-separated string) checked against KNOWN_METRICS; ConfigError names `where`."""
    from xfed.errors import ConfigError

    items = [m.strip() for m in value.split(",")] if isinstance(value, str) else list(value or [])
    unknown = [m for m in items if m not in KNOWN_METRICS]
    if unknown:
        raise ConfigError(f"{where}: unknown metric(s) {', '.join(map(str, unknown))} "
                          f"(known: {', '.join(KNOWN_METRICS)})")
    return [m for m in items if m]


def _libraries() -> tuple[Any, Any, Any, Any]:
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    jieba.setLogLevel(logging.WARNING)  # "Building prefix dict ..." on stderr at first use
    return jieba, Rouge, sentence_bleu, SmoothingFunction


def thudm_scores_one(prediction: str, reference: str) -> dict[str, float]:
    """rouge-1/2/l and bleu-4 (0..100, 4 decimals) of one pair, as THUDM's compute_metrics."""
    jieba, rouge_cls, sentence_bleu, smoothing = _libraries()
    hypothesis = list(jieba.cut(prediction))
    ref_words = list(jieba.cut(reference))
    out: dict[str, float] = {}
    if " ".join(hypothesis).split() and " ".join(ref_words).split():
        result = rouge_cls().get_scores(" ".join(hypothesis), " ".join(ref_words))[0]
        for key in ("rouge-1", "rouge-2", "rouge-l"):
            out[key] = round(result[key]["f"] * 100, 4)
    else:
        out.update({"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0})
    bleu = sentence_bleu([list(reference)], list(prediction), smoothing_function=smoothing().method3)
    out["bleu-4"] = round(float(bleu) * 100, 4)
    return out


def thudm_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean of `thudm_scores_one` over the pairs (0.0 for an empty list)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    totals = dict.fromkeys(THUDM_METRICS, 0.0)
    for p, r in zip(predictions, references, strict=True):
        for key, value in thudm_scores_one(p, r).items():
            totals[key] += value
    n = len(references)
    return {key: (value / n if n else 0.0) for key, value in totals.items()}


def select_scores(predictions: list[str], references: list[str], metrics: list[str] | tuple[str, ...] | None
                  ) -> dict[str, float]:
    """The scores `dataset.metrics` names (default: exact_match and character rouge_l)."""
    from .metrics import generation_scores

    wanted = list(metrics or DEFAULT_METRICS)
    out: dict[str, float] = {}
    if {"exact_match", "rouge_l"} & set(wanted):
        own = generation_scores(predictions, references)
        out.update({k: v for k, v in own.items() if k in wanted})
    if set(THUDM_METRICS) & set(wanted):
        out.update({k: v for k, v in thudm_scores(predictions, references).items() if k in wanted})
    return out
