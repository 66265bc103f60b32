"""Model families, loaders, tokenizers and adapters: ChatGLM-6B, ChatGLM2/3 (as GlmForCausalLM), Auto.

`from xfed.models import load_pretrained` does not import torch until a loader is used.
"""
from __future__ import annotations

from typing import Any

from xfed.models.family import FAMILIES, detect_family, read_config

_LAZY = {
    "load_pretrained": "xfed.models.loading",
    "resolve_dtype": "xfed.models.loading",
    "load_adapter": "xfed.models.adapter_loading",
    "make_peft_model": "xfed.models.adapters",
    "resolve_target_modules": "xfed.models.adapters",
    "linear_module_names": "xfed.models.adapters",
    "build_example": "xfed.models.formats",
    "build_prompt_ids": "xfed.models.formats",
    "encode_example": "xfed.models.formats",
    "format_prompt": "xfed.models.formats",
    "Encoded": "xfed.models.formats",
    "model_fingerprint": "xfed.models.fingerprint",
    "tokenizer_digest": "xfed.models.fingerprint",
    "fingerprint_mismatches": "xfed.models.fingerprint",
    "convert": "xfed.models.convert",
    "ChatGLM3Tokenizer": "xfed.models.chatglm3.tokenization",
}

__all__ = ["FAMILIES", "detect_family", "read_config", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'xfed.models' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
