"""Turns the stage's `peft` section into a peft model: LoRA (with `target_modules: "auto"`) or P-tuning v2.

P-tuning v2 is peft's PREFIX_TUNING: `pre_seq_len` becomes `num_virtual_tokens`, and
`prefix_projection` adds the reparametrisation MLP (ChatGLM's `prefix_encoder.trans`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftConfig, PeftModel, PrefixTuningConfig, TaskType

from xfed.errors import ModelError
from xfed.models import make_peft_model, resolve_target_modules

from .config import Peft


def build_peft_config(model: torch.nn.Module, peft: Peft) -> PeftConfig:
    """A peft config object from the stage's validated `peft` section (config.Peft)."""
    kwargs = peft.config_kwargs()
    kwargs.pop("task_type")  # always a causal LM here
    if peft.kind == "LORA":
        # the models layer knows each family's "auto" and maps XFL's THUDM names (query_key_value → q/k/v)
        kwargs["target_modules"] = resolve_target_modules(model, kwargs["target_modules"])
        return LoraConfig(task_type=TaskType.CAUSAL_LM, **kwargs)
    return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, **kwargs)


def peft_config_summary(config: PeftConfig) -> dict[str, Any]:
    """The JSON-able fields of a peft config that decide the adapter's shapes and maths (for fingerprints)."""
    data = json.loads(json.dumps(config.to_dict(), default=str, sort_keys=True))
    for volatile in ("base_model_name_or_path", "revision", "inference_mode", "peft_version", "auto_mapping"):
        data.pop(volatile, None)
    if isinstance(data.get("target_modules"), list):
        data["target_modules"] = sorted(data["target_modules"])
    return data


def apply_peft(model: torch.nn.Module, peft: Peft, adapter_path: str | Path | None = None) -> PeftModel:
    """Wrap `model` with a fresh adapter, or with the saved one at `adapter_path` (to continue training)."""
    if adapter_path is None:
        peft_model = make_peft_model(model, build_peft_config(model, peft))
        if peft.prefix_init_std is not None:
            redraw_prefix(peft_model, peft.prefix_init_std)
        return peft_model
    from .adapter_state import load_resumable_adapter  # local: adapter_state imports this module

    return load_resumable_adapter(model, Path(adapter_path), expected_kind=peft.kind)


def redraw_prefix(peft_model: PeftModel, std: float) -> None:
    """Draw the prefix embedding afresh from N(0, std²) with torch's seeded generator.

    Why: peft's (and THUDM's) prefix is an nn.Embedding, N(0, 1), about as loud as the keys the frozen model
    computes for real context; on pure8 (docs/QUALITY.md) a start of std 0.3 left the loss plateau that the
    N(0, 1) start often stays on. With `prefix_projection` this is the MLP's input, as in THUDM's PrefixEncoder.
    """
    for encoder in peft_model.prompt_encoder.values():
        with torch.no_grad():
            encoder.embedding.weight.normal_(0.0, std)


def check_trainable(peft_model: PeftModel, where: str) -> None:
    """An adapter with nothing to train is a configuration mistake, not a silent no-op."""
    if not any(p.requires_grad for p in peft_model.parameters()):
        raise ModelError(f"{where}: the adapter has no trainable parameters")
