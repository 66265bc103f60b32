"""Inference with a trained adapter: load base + adapter, render prompts as in training, answer, score a file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from xfed.errors import ConfigError

from . import data
from .config import DatasetParams
from .metrics import generation_scores
from .metrics_thudm import THUDM_METRICS, select_scores
from .party import load_model_folder
from .training import greedy_answers


def load_for_inference(model_dir: str | Path, adapter_dir: str | Path | None = None, device: str = "cpu"):
    """(model, tokenizer) in eval mode: the base model, with the adapter applied when one is given."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a command-line tool: answers, not loading bars
    warnings.filterwarnings("ignore", category=FutureWarning)
    model, tokenizer = load_model_folder(Path(model_dir), device=device)
    if adapter_dir is not None:
        from xfed.models import load_adapter

        model = load_adapter(model, str(adapter_dir))
    return model.eval(), tokenizer


def render_prompt(query: str, *, history: list[tuple[str, str]] | None = None, pattern: str | None = None,
                  instruction: str = "", history_template: str | None = None) -> str:
    """The text the model sees, rendered as the training data was (dataset.prompt_pattern / history_template)."""
    if history:
        return data.render_history_prompt(query, history, history_template)
    return data.render_qa_prompt(pattern or data.DEFAULT_PROMPT_PATTERN, instruction, query)


_NO_LIMIT = DatasetParams(max_src_length=1_000_000)  # a prompt typed at inference time is never cut


def prompt_ids(model: Any, tokenizer: Any, prompt: str, *, query: str = "",
               history: list[tuple[str, str]] | None = None) -> list[int]:
    """Ids of one rendered prompt in the model family's training layout (ChatGLM3: role tokens, the raw
    query and history as turns when a history is given), not truncated."""
    example = data.Example(prompt=prompt, answer="", history=tuple(history or ()), query=query)
    [(ids, _)] = data.build_prompts([example], tokenizer, _NO_LIMIT, model=model)
    return ids


def answer(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 64, *, query: str = "",
           history: list[tuple[str, str]] | None = None) -> str:
    """Greedy answer to one rendered prompt (stops at eos and, for chat models, at the next role token),
    stripped as THUDM's chat strips it (ChatGLM3 answers start with the "\\n" after <|assistant|>)."""
    ids = prompt_ids(model, tokenizer, prompt, query=query, history=history)
    return greedy_answers(model, tokenizer, [ids], max_new_tokens, batch_size=1)[0].strip()


def read_eval_pairs(path: str | Path, model: Any, tokenizer: Any, dataset_params: data.DatasetSection = None
                    ) -> list[tuple[list[int], str]]:
    """(prompt ids, reference) pairs of a held-out file, read and tokenised exactly as training data is."""
    examples = data.read_records([str(path)], dataset_params)
    if not examples:
        raise ConfigError(f"{path}: no examples")
    return data.build_prompts(examples, tokenizer, dataset_params, model=model)


def evaluate_pairs(model: Any, tokenizer: Any, pairs: list[tuple[list[int], str]], max_new_tokens: int = 32,
                   batch_size: int = 16, metrics: list[str] | None = None) -> dict[str, Any]:
    """Exact match and character ROUGE-L of greedy answers against the references (+ the answers), and
    THUDM's rouge-1/2/l and bleu-4 where `metrics` names them (metrics_thudm)."""
    predictions = greedy_answers(model, tokenizer, [p for p, _ in pairs], max_new_tokens, batch_size=batch_size)
    references = [ref for _, ref in pairs]
    scores = generation_scores(predictions, references)
    scores.update(select_scores(predictions, references, [m for m in metrics or () if m in THUDM_METRICS]))
    return {**scores, "n": len(pairs), "predictions": predictions}


def evaluate_with_baseline(model: Any, tokenizer: Any, pairs: list[tuple[list[int], str]],
                           max_new_tokens: int = 32, metrics: list[str] | None = None
                           ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(base model scores, base + adapter scores) from one loaded PeftModel (adapter switched off, then on)."""
    if not hasattr(model, "disable_adapter"):
        raise ConfigError("--baseline needs --adapter")
    with model.disable_adapter():
        base = evaluate_pairs(model, tokenizer, pairs, max_new_tokens, metrics=metrics)
    return base, evaluate_pairs(model, tokenizer, pairs, max_new_tokens, metrics=metrics)
