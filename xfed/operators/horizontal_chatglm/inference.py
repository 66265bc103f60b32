"""Inference with a trained adapter: load base + adapter, render prompts as in training, answer, score a file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xfed.errors import ConfigError, ModelError

from .metrics import generation_scores
from .party import load_model_folder
from .training import greedy_answers

DEFAULT_HISTORY_TEMPLATE = "[Round {}]\n问：{}\n答：{}\n"


def load_for_inference(model_dir: str | Path, adapter_dir: str | Path | None = None, device: str = "cpu"):
    """(model, tokenizer) in eval mode: the base model, with the adapter applied when one is given."""
    model, tokenizer = load_model_folder(Path(model_dir), device=device)
    if adapter_dir is not None:
        try:
            from xfed.models import load_adapter
        except ImportError:
            load_adapter = None
        path = Path(adapter_dir)
        if load_adapter is not None:
            model = load_adapter(model, str(path))
        else:
            from peft import PeftModel

            if not (path / "adapter_config.json").is_file():
                raise ModelError(f"{path}: not a peft adapter folder (adapter_config.json missing)")
            model = PeftModel.from_pretrained(model, str(path))
    return model.eval(), tokenizer


def render_prompt(query: str, *, history: list[tuple[str, str]] | None = None, pattern: str = "{}",
                  instruction: str = "", history_template: str = DEFAULT_HISTORY_TEMPLATE) -> str:
    """The text the model sees: past turns in `history_template`, then the query in `pattern`.

    `pattern` has one slot (query) or two (instruction, query), like dataset.prompt_pattern.
    """
    slots = pattern.count("{}")
    current = pattern.format(instruction, query) if slots == 2 else pattern.format(query)
    past = "".join(history_template.format(i, q, a) for i, (q, a) in enumerate(history or [], 1))
    return past + current


def answer(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 64) -> str:
    """Greedy answer to one rendered prompt."""
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    return greedy_answers(model, tokenizer, [ids], max_new_tokens, batch_size=1)[0]


def read_eval_pairs(path: str | Path, *, pattern: str = "{}", prompt_column: str = "prompt",
                    response_column: str = "response") -> list[tuple[str, str]]:
    """(rendered prompt, reference) pairs from XFL QA json or JSON/JSONL records with prompt/response columns."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    if path.suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if isinstance(data, dict) and "instances" in data:  # XFL QA: instruction + instances[{input, output}]
            instruction = str(data.get("instruction", ""))
            return [(render_prompt(str(i["input"]), pattern=pattern, instruction=instruction), str(i["output"]))
                    for i in data["instances"]]
        rows = data if isinstance(data, list) else [data]
    pairs = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or prompt_column not in row or response_column not in row:
            raise ConfigError(f"{path}: record {n} has no {prompt_column!r} / {response_column!r} columns")
        pairs.append((render_prompt(str(row[prompt_column]), pattern=pattern), str(row[response_column])))
    return pairs


def evaluate_pairs(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], max_new_tokens: int = 32,
                   batch_size: int = 16) -> dict[str, float]:
    """Exact match and character ROUGE-L of greedy answers against the references."""
    prompts = [tokenizer(p, add_special_tokens=True)["input_ids"] for p, _ in pairs]
    predictions = greedy_answers(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size)
    scores = generation_scores(predictions, [ref for _, ref in pairs])
    return {**scores, "n": len(pairs)}
