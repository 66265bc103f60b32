"""Adapters onto loaded models: which modules a LoRA targets, and a new peft model that keeps each
family's semantics (saved adapters are loaded by adapter_loading.py).

Target-module resolution for the operator: XFL configs say `query_key_value` (THUDM's fused
attention input); on a model that splits it (GlmForCausalLM converted from ChatGLM2/3, Llama,
Qwen …) that means its q/k/v projections, exactly: a LoRA on the fused Linear equals three
LoRAs sharing A whose B matrices are the fused B's row blocks [q | k | v].
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from xfed.errors import ModelError

log = logging.getLogger(__name__)


# Fused-qkv names across families, most specific first.
_QKV_SPLIT = ("q_proj", "k_proj", "v_proj")
_QKV_FUSED = ("query_key_value", "c_attn", "qkv_proj", "Wqkv", "W_pack")
# THUDM ChatGLM2/3 module name -> GlmForCausalLM module name(s).
THUDM_TO_GLM = {
    "query_key_value": _QKV_SPLIT,
    "dense": ("o_proj",),
    "dense_h_to_4h": ("gate_up_proj",),
    "dense_4h_to_h": ("down_proj",),
}
# "auto" per model_type where peft has no default (or a poorer one for fine-tuning).
AUTO_TARGETS = {
    "glm": _QKV_SPLIT, "glm4": _QKV_SPLIT, "chatglm": ("query_key_value",), "chatglm6b": ("query_key_value",),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj"), "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "qwen3": ("q_proj", "k_proj", "v_proj", "o_proj"), "mistral": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "gpt2": ("c_attn",),
}


# --- target modules -------------------------------------------------------------------------------
def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Distinct last name components of the model's Linear (and GPT-2 Conv1D) layers, sorted."""
    names = set()
    for full, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            names.add(full.rsplit(".", 1)[-1])
    return sorted(names)


def model_type(model: torch.nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "model_type", "") or "")


def resolve_target_modules(model: torch.nn.Module, names: list[str] | str | None) -> list[str]:
    """LoRA target module names valid for `model`.

    None/"auto": the family's default; "all-linear": every Linear but the output head; XFL's
    "query_key_value" (and THUDM's dense/dense_h_to_4h/dense_4h_to_h) map onto a model that splits
    them. A name the model lacks is a ModelError listing the Linear modules it has.
    """
    available = linear_module_names(model)
    head = {"lm_head", "output_layer", "embed_out"}
    if names is None or names == "auto" or names == ["auto"]:
        defaults = AUTO_TARGETS.get(model_type(model))
        if defaults is None:
            from peft.utils.constants import (
                TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_defaults,
            )
            defaults = peft_defaults.get(model_type(model))
        if defaults is None or not set(defaults) <= set(available):
            raise ModelError(f"target_modules 'auto': no default for model_type {model_type(model)!r}; name them "
                             f"from its Linear modules: {', '.join(available)}")
        return list(defaults)
    if names == "all-linear" or names == ["all-linear"]:
        return [n for n in available if n not in head]
    if isinstance(names, str):
        names = [names]
    resolved: list[str] = []
    for name in names:
        if name in available:
            mapped: tuple[str, ...] = (name,)
        elif name in THUDM_TO_GLM and set(THUDM_TO_GLM[name]) <= set(available):
            mapped = THUDM_TO_GLM[name]
        elif name in _QKV_FUSED and set(_QKV_SPLIT) <= set(available):
            mapped = _QKV_SPLIT
        elif name in _QKV_FUSED and (fused := [f for f in _QKV_FUSED if f in available]):
            mapped = (fused[0],)
        else:
            raise ModelError(f"target_modules: {name!r} is not a module of {type(model).__name__}; its Linear "
                             f"modules are: {', '.join(available)}")
        if mapped != (name,):
            log.info("target_modules: %r mapped to %s on %s", name, list(mapped), type(model).__name__)
        resolved.extend(m for m in mapped if m not in resolved)
    return resolved


# --- peft model creation ---------------------------------------------------------------------------
def is_converted_chatglm(model: torch.nn.Module) -> bool:
    config = getattr(model, "config", None)
    return model_type(model) == "glm" and getattr(config, "xfed_source_family", None) in ("chatglm2", "chatglm3")


def make_peft_model(model: torch.nn.Module, peft_config: Any, adapter_name: str = "default"):
    """get_peft_model that keeps THUDM's prefix semantics on ChatGLM2/3 (prefix keys unrotated,
    real-token positions not shifted) and resolves LoRA target names; use it instead of peft's."""
    from peft import PeftType, get_peft_model

    if peft_config.peft_type == PeftType.LORA:
        peft_config.target_modules = resolve_target_modules(model, name_list(peft_config.target_modules))
    elif peft_config.peft_type == PeftType.PREFIX_TUNING and is_v1(model):
        # ChatGLM-6B's prefix is THUDM's layout (hidden-size keys per head); peft cannot infer it
        peft_config = v1_module().v1_prefix_tuning_config(
            model, peft_config.num_virtual_tokens, prefix_projection=peft_config.prefix_projection,
            encoder_hidden_size=peft_config.encoder_hidden_size, inference_mode=peft_config.inference_mode)
    peft_model = get_peft_model(model, peft_config, adapter_name=adapter_name)
    after_peft(model, peft_config)
    return peft_model


def name_list(value: Any) -> list[str] | str | None:
    if value is None or isinstance(value, str):
        return value
    return list(value)


def after_peft(model: torch.nn.Module, peft_config: Any) -> None:
    from peft import PeftType

    if peft_config.peft_type == PeftType.PREFIX_TUNING and is_converted_chatglm(model):
        from xfed.models.chatglm3.semantics import install_thudm_semantics, set_prefix_length
        install_thudm_semantics(model)
        set_prefix_length(model, peft_config.num_virtual_tokens)
    else:
        if is_v1(model):
            v1_module().after_peft_model(model, peft_config)


def v1_module():
    import xfed.models.chatglm as v1  # lazily: importing it registers the v1 family with transformers

    return v1


def is_v1(model: torch.nn.Module) -> bool:
    return bool(v1_module().is_v1_model(model))
