"""THUDM's ChatGLM2/3 position semantics on a GlmForCausalLM instance.

THUDM numbers positions 0..L-1 over the whole (left-padded) row, also while generating, and a
P-tuning v2 prefix does not shift them (the prefix keys carry no rotation). transformers'
defaults differ in both places (generate counts from the first real token, a cache prefix
shifts positions), so these two instance-level hooks restore THUDM's numbers exactly. Plain
`forward` without prefix is unaffected. A folder written by save_pretrained/convert loads as an
ordinary GlmForCausalLM; load_pretrained re-installs the hooks from `xfed_source_family`.
"""
from __future__ import annotations

import types
from typing import Any

import torch

PREFIX_ATTR = "xfed_prefix_len"


def _thudm_generation_positions(self, inputs_tensor: torch.Tensor, model_kwargs: dict[str, Any]) -> torch.Tensor:
    if "input_ids" in model_kwargs and model_kwargs["input_ids"].shape[1] > 0:
        inputs_tensor = model_kwargs["input_ids"]
    batch, length = inputs_tensor.shape[:2]
    past = 0
    cache = model_kwargs.get("past_key_values")
    if cache is not None and (seen := cache.get_seq_length()) > 0:
        # a non-empty cache holds the prefix too (peft injects it before the first step)
        past = max(seen - int(getattr(self.model, PREFIX_ATTR, 0)), 0)
    positions = torch.arange(past, past + length, dtype=torch.long, device=inputs_tensor.device)
    return positions.unsqueeze(0).expand(batch, -1).contiguous()


def _prefix_aware_positions(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]):
    if kwargs.get("position_ids") is not None:
        return None
    prefix = int(getattr(module, PREFIX_ATTR, 0))
    cache = kwargs.get("past_key_values")
    if not prefix or cache is None:
        return None
    embeds = kwargs.get("inputs_embeds")
    ids = kwargs.get("input_ids", args[0] if args else None)
    ref = ids if ids is not None else embeds
    if ref is None:
        return None
    start = cache.get_seq_length() - prefix
    kwargs["position_ids"] = torch.arange(start, start + ref.shape[1], device=ref.device).unsqueeze(0)
    return args, kwargs


def install_thudm_semantics(model: torch.nn.Module) -> torch.nn.Module:
    """Make a GlmForCausalLM converted from ChatGLM2/3 number positions as THUDM's code does."""
    if getattr(model, "_xfed_thudm_semantics", False):
        return model
    model._prepare_position_ids_for_generation = types.MethodType(_thudm_generation_positions, model)
    model.model.register_forward_pre_hook(_prefix_aware_positions, with_kwargs=True)
    model._xfed_thudm_semantics = True
    return model


def set_prefix_length(model: torch.nn.Module, length: int) -> None:
    """Tell the hooks how many P-tuning prefix tokens sit in front of the cache (0 to clear)."""
    setattr(model.model, PREFIX_ATTR, int(length))
