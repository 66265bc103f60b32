"""A model's architecture without its weights: what an aggregator needs to know an adapter's layout.

`load_skeleton` builds the model of a folder on the meta device (no memory, no weight file read) and
its tokenizer; an adapter applied to it has the same trainable names and shapes as on the real model.
`materialize_trainable` then gives the adapter's trainable parameters real (zero) CPU storage, to be
filled with the values the parties send: the aggregator's memory is the adapter's size.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from xfed.models.family import detect_family, read_config


def load_skeleton(path: str | Path) -> tuple[Any, Any]:
    """(model on the meta device, tokenizer) of a local folder, for every family load_pretrained reads."""
    folder = Path(path).expanduser()
    family = detect_family(folder)
    cfg = read_config(folder)
    if family == "chatglm":
        from xfed.models.chatglm import (
            ChatGLM6BConfig,
            ChatGLM6BForCausalLM,
            config_from_thudm,
            load_v1_tokenizer,
        )

        if cfg.get("model_type") == ChatGLM6BConfig.model_type:
            config = ChatGLM6BConfig.from_dict({k: v for k, v in cfg.items() if k != "model_type"})
        else:
            config = config_from_thudm(cfg, str(folder / "config.json"))
        with torch.device("meta"):
            model = ChatGLM6BForCausalLM(config)
        return model.eval(), load_v1_tokenizer(folder)
    if family in ("chatglm2", "chatglm3"):
        from xfed.models.chatglm3.loader import load_tokenizer
        from xfed.models.chatglm3.semantics import install_thudm_semantics

        tokenizer = load_tokenizer(folder, family)
        if cfg.get("model_type") == "chatglm":
            from transformers import GlmForCausalLM

            from xfed.models.chatglm3.config import glm_config_from_thudm
            config = glm_config_from_thudm(cfg, source=str(folder / "config.json"), family=family,
                                           pad_token_id=tokenizer.pad_token_id)
            with torch.device("meta"):
                model = GlmForCausalLM(config)
        else:
            model = _native_skeleton(folder)
        install_thudm_semantics(model)
        return model.eval(), tokenizer
    from xfed.models.loading import _load_native_tokenizer

    return _native_skeleton(folder).eval(), _load_native_tokenizer(folder)


def _native_skeleton(folder: Path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from xfed.errors import ModelError
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as err:
        raise ModelError(f"{folder / 'config.json'}: transformers cannot load this config without remote code "
                         f"({' '.join(str(err).split())[:200]})") from None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=False)


def materialize_trainable(model: torch.nn.Module) -> int:
    """Give every trainable meta parameter zeroed float32 CPU storage; returns the bytes allocated."""
    total = 0
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and param.requires_grad and param.is_meta:
                module._parameters[name] = torch.nn.Parameter(torch.zeros(param.shape, dtype=torch.float32))
                total += param.numel() * 4
    return total
