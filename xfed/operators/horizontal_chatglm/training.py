"""The real Hugging Face Trainer for one party: arguments from train_params, step counting, evaluation."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from xfed.errors import ConfigError
from xfed.operators.horizontal_chatglm.training_args import FORCED_TRAINER_ARGS

_ARG_FIELDS = {f.name for f in dataclasses.fields(TrainingArguments)}


def training_arguments(trainer_params: dict[str, Any], output_dir: Path) -> TrainingArguments:
    """TrainingArguments from the stage's `trainer` section (XFL's `no_cuda` is `use_cpu`)."""
    kwargs = dict(trainer_params or {})
    if "no_cuda" in kwargs:
        no_cuda = bool(kwargs.pop("no_cuda"))
        kwargs.setdefault("use_cpu", no_cuda)
    if not torch.cuda.is_available():
        kwargs["use_cpu"] = True  # a party without a GPU still runs a config written for one
    unknown = sorted(set(kwargs) - _ARG_FIELDS)
    if unknown:
        raise ConfigError(f"train_params.trainer: unknown TrainingArguments key(s) {', '.join(unknown)}")
    kwargs.setdefault("report_to", "none")  # the Trainer's own default is every integration installed
    kwargs.update(FORCED_TRAINER_ARGS)  # one list, shared with `validate`'s notes
    kwargs["output_dir"] = str(output_dir)
    try:
        return TrainingArguments(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"train_params.trainer: {str(exc).splitlines()[0]}") from None


def build_trainer(model: torch.nn.Module, args: TrainingArguments, train_dataset: Any, collator: Any,
                  callbacks: list[Any]) -> Trainer:
    if args.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad path
    trainer = Trainer(model=model, args=args, train_dataset=train_dataset, data_collator=collator, callbacks=callbacks)
    for noisy in (PrinterCallback, ProgressCallback):  # our callback reports per round instead
        trainer.remove_callback(noisy)
    return trainer


def count_optimizer_steps(trainer: Trainer) -> int:
    """The number of optimizer steps `trainer.train()` will run, computed by the Trainer's own rule."""
    dataloader = trainer.get_train_dataloader()
    return int(trainer.set_initial_training_values(trainer.args, dataloader)[-1])


@torch.no_grad()
def valset_loss(model: torch.nn.Module, features: list[dict[str, Any]], collator: Any, batch_size: int) -> float:
    """Mean cross-entropy per supervised token over the valset (padding and prompt tokens excluded)."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    device = next(model.parameters()).device
    try:
        for start in range(0, len(features), batch_size):
            batch = collator(features[start:start + batch_size])
            batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            n = int((batch["labels"][:, 1:] != -100).sum())
            if n == 0:
                continue
            loss = model(**batch).loss
            total += float(loss) * n
            tokens += n
    finally:
        model.train(was_training)
    return total / tokens if tokens else math.nan


# Chat models end a reply by handing the turn back: ChatGLM3 (and GLM-4) emit <|user|> or <|observation|>
# instead of eos, and THUDM's chat() stops at them as at eos.
ROLE_STOP_TOKENS = ("<|user|>", "<|observation|>")


def stop_token_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """The ids that end an answer: eos, the generation config's eos ids, and the chat role tokens the
    tokenizer has (ChatGLM3's `get_command`, or ordinary vocabulary entries)."""
    ids: list[int] = []

    def add(value: Any) -> None:
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, int) and not isinstance(v, bool) and v >= 0 and v not in ids:
                ids.append(v)

    add(tokenizer.eos_token_id)
    add(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    unk = getattr(tokenizer, "unk_token_id", None)
    for token in ROLE_STOP_TOKENS:
        get_command = getattr(tokenizer, "get_command", None)
        try:
            value = get_command(token) if get_command is not None else tokenizer.convert_tokens_to_ids(token)
        except (KeyError, ValueError):
            continue
        if value != unk:
            add(value)
    return ids


def _until_stop(row: list[int], stops: set[int]) -> list[int]:
    for i, token in enumerate(row):
        if token in stops:
            return row[:i]
    return row


@torch.no_grad()
def greedy_answers(model: torch.nn.Module, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int,
                   batch_size: int = 16) -> list[str]:
    """Greedy continuations of tokenised prompts (left-padded batches), cut at the first stop token
    (`stop_token_ids`) and decoded without special tokens."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_token_ids(tokenizer, model)
    out: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            width = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, p in enumerate(chunk):
                ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
                mask[row, width - len(p):] = 1
            generated = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=stops,
            )
            for row in generated[:, width:].tolist():
                out.append(tokenizer.decode(_until_stop(row, set(stops)), skip_special_tokens=True))
    finally:
        model.train(was_training)
    return out
