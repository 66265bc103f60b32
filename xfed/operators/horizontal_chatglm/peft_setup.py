"""Turns the stage's `peft` section into a peft model: LoRA (with `target_modules: "auto"`) or P-tuning v2.

P-tuning v2 is peft's PREFIX_TUNING: `pre_seq_len` becomes `num_virtual_tokens`, and
`prefix_projection` adds the reparametrisation MLP (ChatGLM's `prefix_encoder.trans`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftConfig, PeftModel, PrefixTuningConfig, TaskType, get_peft_model

from xfed.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

PEFT_TYPES = ("LORA", "PREFIX_TUNING")

# What "auto" means per architecture: the attention projections, the modules LoRA papers and
# ChatGLM's own fine-tuning recipes adapt.  Unknown architectures get every Linear but the head.
AUTO_TARGETS: dict[str, list[str]] = {
    "chatglm": ["query_key_value"],
    "glm": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "glm4": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gpt2": ["c_attn"],
}

_LORA_FIELDS = {f.name for f in dataclasses.fields(LoraConfig)} - {"peft_type", "base_model_name_or_path", "revision"}


def peft_kind(peft: dict[str, Any]) -> str:
    """`"LORA"` or `"PREFIX_TUNING"`; exactly one must be configured."""
    kinds = [k for k in PEFT_TYPES if peft.get(k) is not None]
    if len(kinds) != 1:
        raise ConfigError(f"train_params.peft: exactly one of {', '.join(PEFT_TYPES)} is required, got {sorted(peft)}")
    return kinds[0]


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Leaf names of the Linear-like modules (what LoRA can target), sorted, head excluded."""
    names = set()
    for full, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            leaf = full.rsplit(".", 1)[-1]
            if leaf != "lm_head":
                names.add(leaf)
    return sorted(names)


def resolve_target_modules(model: torch.nn.Module, target_modules: Any) -> list[str]:
    """The LoRA target modules for this model: "auto" per architecture, or the configured names checked."""
    try:  # the models layer knows the THUDM names (query_key_value on a converted GLM → q/k/v)
        from xfed.models import resolve_target_modules as models_resolve
    except ImportError:
        models_resolve = None
    if models_resolve is not None:
        return list(models_resolve(model, target_modules))
    have = linear_module_names(model)
    if target_modules in (None, "auto", ["auto"]):
        model_type = getattr(model.config, "model_type", "")
        wanted = [m for m in AUTO_TARGETS.get(model_type, have) if m in have]
        if not wanted:
            raise ConfigError(f"peft.LORA.target_modules: 'auto' found no Linear modules in {model_type!r} model")
        return wanted
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    missing = [m for m in target_modules if m not in have]
    if missing:
        raise ConfigError(
            f"peft.LORA.target_modules: the model has no module named {', '.join(missing)}; "
            f"its Linear modules are: {', '.join(have)} (or use \"auto\")"
        )
    return list(target_modules)


def build_peft_config(model: torch.nn.Module, peft: dict[str, Any]) -> PeftConfig:
    """A peft config object from the stage's `peft` section (XFL key names)."""
    kind = peft_kind(peft)
    section = dict(peft[kind])
    section.pop("task_type", None)  # always a causal LM here
    if kind == "LORA":
        unknown = sorted(set(section) - _LORA_FIELDS)
        if unknown:
            raise ConfigError(f"peft.LORA: unknown key(s) {', '.join(unknown)}")
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
        return get_peft_model(model, build_peft_config(model, peft))
    from .adapter_state import load_resumable_adapter  # local: adapter_state imports this module

    return load_resumable_adapter(model, Path(adapter_path), expected_kind=peft_kind(peft))


def check_trainable(peft_model: PeftModel, where: str) -> None:
    """An adapter with nothing to train is a configuration mistake, not a silent no-op."""
    if not any(p.requires_grad for p in peft_model.parameters()):
        raise ModelError(f"{where}: the adapter has no trainable parameters")
