"""Turns the stage's `peft` section into a peft model: LoRA (with `target_modules: "auto"`) or P-tuning v2.

P-tuning v2 is peft's PREFIX_TUNING: `pre_seq_len` becomes `num_virtual_tokens`, and
`prefix_projection` adds the reparametrisation MLP (ChatGLM's `prefix_encoder.trans`).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftConfig, PeftModel, PrefixTuningConfig, TaskType

from xfed.errors import ConfigError, ModelError
from xfed.models import make_peft_model, resolve_target_modules

PEFT_TYPES = ("LORA", "PREFIX_TUNING")

_LORA_FIELDS = {f.name for f in dataclasses.fields(LoraConfig)} - {"peft_type", "base_model_name_or_path", "revision"}


def peft_kind(peft: dict[str, Any]) -> str:
    """`"LORA"` or `"PREFIX_TUNING"`; exactly one must be configured."""
    kinds = [k for k in PEFT_TYPES if peft.get(k) is not None]
    if len(kinds) != 1:
        raise ConfigError(f"train_params.peft: exactly one of {', '.join(PEFT_TYPES)} is required, got {sorted(peft)}")
    return kinds[0]


def build_peft_config(model: torch.nn.Module, peft: dict[str, Any]) -> PeftConfig:
    """A peft config object from the stage's `peft` section (XFL key names)."""
    kind = peft_kind(peft)
    section = dict(peft[kind])
    section.pop("task_type", None)  # always a causal LM here
    if kind == "LORA":
        unknown = sorted(set(section) - _LORA_FIELDS)
        if unknown:
            raise ConfigError(f"peft.LORA: unknown key(s) {', '.join(unknown)}")
        # the models layer knows each family's "auto" and maps XFL's THUDM names (query_key_value → q/k/v)
        section["target_modules"] = resolve_target_modules(model, section.get("target_modules", "auto"))
        return LoraConfig(task_type=TaskType.CAUSAL_LM, **section)
    pre_seq_len = section.pop("pre_seq_len", section.pop("num_virtual_tokens", None))
    if not isinstance(pre_seq_len, int) or isinstance(pre_seq_len, bool) or pre_seq_len < 1:
        raise ConfigError(f"peft.PREFIX_TUNING.pre_seq_len: expected an integer ≥ 1, got {pre_seq_len!r}")
    projection = bool(section.pop("prefix_projection", False))
    hidden = section.pop("prefix_hidden_size", section.pop("encoder_hidden_size", None))
    if section:
        raise ConfigError(f"peft.PREFIX_TUNING: unknown key(s) {', '.join(sorted(section))}")
    kwargs: dict[str, Any] = {}
    if hidden is not None:
        kwargs["encoder_hidden_size"] = int(hidden)
    return PrefixTuningConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=pre_seq_len, prefix_projection=projection, **kwargs
    )


def peft_config_summary(config: PeftConfig) -> dict[str, Any]:
    """The JSON-able fields of a peft config that decide the adapter's shapes and maths (for fingerprints)."""
    data = json.loads(json.dumps(config.to_dict(), default=str, sort_keys=True))
    for volatile in ("base_model_name_or_path", "revision", "inference_mode", "peft_version", "auto_mapping"):
        data.pop(volatile, None)
    if isinstance(data.get("target_modules"), list):
        data["target_modules"] = sorted(data["target_modules"])
    return data


def apply_peft(model: torch.nn.Module, peft: dict[str, Any], adapter_path: str | Path | None = None) -> PeftModel:
    """Wrap `model` with a fresh adapter, or with the saved one at `adapter_path` (to continue training)."""
    if adapter_path is None:
        return make_peft_model(model, build_peft_config(model, peft))
    from .adapter_state import load_resumable_adapter  # local: adapter_state imports this module

    return load_resumable_adapter(model, Path(adapter_path), expected_kind=peft_kind(peft))


def check_trainable(peft_model: PeftModel, where: str) -> None:
    """An adapter with nothing to train is a configuration mistake, not a silent no-op."""
    if not any(p.requires_grad for p in peft_model.parameters()):
        raise ModelError(f"{where}: the adapter has no trainable parameters")
