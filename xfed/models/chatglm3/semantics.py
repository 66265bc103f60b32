"""THUDM's P-tuning v2 semantics for a GlmForCausalLM converted from ChatGLM2/3.

THUDM's prefix keys carry no rotation, and a real token's position counts from the first real
token of its row (THUDM's tokenizer hands the model those position ids, pads get 0), never
from the prefix. Without a prefix the numbering cannot matter (rotary attention only sees
position differences), but a prefix makes absolute positions visible. peft instead adds the
prefix length to every position id it is given, and GlmModel numbers positions after the cached
prefix; the forward pre-hook here restores THUDM's numbers. It acts only while a prefix length is
set (set_prefix_length) and the cache holds that prefix.
"""
from __future__ import annotations

from typing import Any

import torch

PREFIX_ATTR = "xfed_prefix_len"


def _prefix_positions(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]):
    prefix = int(getattr(module, PREFIX_ATTR, 0))
    cache = kwargs.get("past_key_values")
    if not prefix or cache is None or cache.get_seq_length() < prefix:
        return None
    position_ids = kwargs.get("position_ids")
    if position_ids is not None:
        # peft shifted them by the prefix length; THUDM does not.
        kwargs["position_ids"] = position_ids - prefix
        return args, kwargs
    ids = kwargs.get("input_ids", args[0] if args else None)
    ref = ids if ids is not None else kwargs.get("inputs_embeds")
    if ref is None:
        return None
    length = ref.shape[1]
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.ndim == 2:
        real = mask[:, prefix:].long()
        positions = (real.cumsum(-1) - 1).clamp(min=0)[:, -length:]
    else:
        start = cache.get_seq_length() - prefix
        positions = torch.arange(start, start + length, device=ref.device).unsqueeze(0)
    kwargs["position_ids"] = positions.to(ref.device)
    return args, kwargs


def install_thudm_semantics(model: torch.nn.Module) -> torch.nn.Module:
    """Install the prefix-position hook on a GlmForCausalLM converted from ChatGLM2/3 (idempotent)."""
    if getattr(model, "_xfed_thudm_semantics", False):
        return model
    model.model.register_forward_pre_hook(_prefix_positions, with_kwargs=True)
    model._xfed_thudm_semantics = True
    return model


def set_prefix_length(model: torch.nn.Module, length: int) -> None:
    """Tell the hook how many P-tuning prefix tokens sit in front of the cache (0 to clear)."""
    setattr(model.model, PREFIX_ATTR, int(length))
