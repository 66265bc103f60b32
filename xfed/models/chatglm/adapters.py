"""ChatGLM-6B adapters: THUDM P-tuning v2 checkpoints and XFL LoRA as peft models, THUDM semantics.

P-tuning v2: THUDM's `PrefixEncoder` and peft's prefix tuning lay the prefix out identically
(per virtual token: [layer0 key | layer0 value | layer1 key | ...], each heads x head_dim), so
`transformer.prefix_encoder.embedding.weight` is peft's `embedding.weight` and a projected
checkpoint's `trans.0` / `trans.2` are peft's `transform.0` / `transform.2`. THUDM's semantics need
nothing from peft: our model uses cached keys as stored (prefix keys are never rotated) and derives
the positions of real tokens from the tokens themselves, so a prefix never shifts them.
LoRA: XFL targeted THUDM's fused `query_key_value`, which our model keeps by name, so a peft
adapter saved by XFL's operator applies 1:1.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from xfed.errors import ModelError

from ..family import read_json_object
from .modeling_chatglm import ChatGLM6BForCausalLM, ChatGLM6BPreTrainedModel

PREFIX = "transformer.prefix_encoder."
EMBEDDING_KEY = PREFIX + "embedding.weight"
_TRANS = {"trans.0.weight": "transform.0.weight", "trans.0.bias": "transform.0.bias",
          "trans.2.weight": "transform.2.weight", "trans.2.bias": "transform.2.bias"}


def is_v1_model(model: Any) -> bool:
    """True for our ChatGLM-6B classes (also when wrapped by peft)."""
    base = model
    for _ in range(3):  # PeftModel -> LoraModel/base -> model
        if isinstance(base, ChatGLM6BPreTrainedModel):
            return True
        base = getattr(base, "base_model", None) or getattr(base, "model", None)
        if base is None:
            return False
    return isinstance(base, ChatGLM6BPreTrainedModel)


def v1_prefix_tuning_config(model: ChatGLM6BForCausalLM, num_virtual_tokens: int, *,
                            prefix_projection: bool = False, encoder_hidden_size: int | None = None,
                            inference_mode: bool = False):
    """peft PrefixTuningConfig equal to THUDM's P-tuning v2 (`pre_seq_len`, `prefix_projection`)."""
    from peft import PrefixTuningConfig, TaskType

    cfg = model.config
    return PrefixTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=int(num_virtual_tokens),
        num_layers=cfg.num_hidden_layers,
        token_dim=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        prefix_projection=bool(prefix_projection),
        encoder_hidden_size=encoder_hidden_size or cfg.hidden_size,
        inference_mode=inference_mode,
    )


def after_peft_model(model: Any, peft_config: Any) -> None:
    """Hook for the generic loader after get_peft_model: checks a prefix fits; nothing to install."""
    from peft import PeftType

    if getattr(peft_config, "peft_type", None) != PeftType.PREFIX_TUNING:
        return
    cfg = model.config
    token_dim = getattr(peft_config, "token_dim", None)
    heads = getattr(peft_config, "num_attention_heads", None)
    if token_dim not in (None, cfg.hidden_size) or heads not in (None, cfg.num_attention_heads):
        raise ModelError(f"prefix tuning config (token_dim={token_dim}, heads={heads}) does not fit ChatGLM-6B "
                         f"(hidden_size={cfg.hidden_size}, heads={cfg.num_attention_heads})")


def _read_ptuning(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str, Path | None]:
    from .thudm import _load_bin, _load_safetensors

    p = Path(path)
    config_json = None
    if p.is_dir():
        config_json = p / "config.json"
        for name in ("pytorch_model.bin", "model.safetensors"):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise ModelError(f"{p}: no P-tuning checkpoint (pytorch_model.bin or model.safetensors)")
    state = _load_safetensors(p) if p.suffix == ".safetensors" else _load_bin(p)
    return state, str(p), config_json


def load_v1_ptuning(model: ChatGLM6BForCausalLM, checkpoint, *, source: str | None = None,
                    adapter_name: str = "default", is_trainable: bool = False):
    """PeftModel (prefix tuning) on `model` from a THUDM P-tuning v2 checkpoint.

    checkpoint: a folder (THUDM's `checkpoint-N` with pytorch_model.bin, config.json optional),
    a weight file, or an already-read state dict. Keys: `transformer.prefix_encoder.embedding.weight`
    and, for `prefix_projection`, `transformer.prefix_encoder.trans.{0,2}.{weight,bias}`.
    """
    from peft import PeftModelForCausalLM

    declared = None
    if isinstance(checkpoint, dict):
        state, src = checkpoint, source or "P-tuning state dict"
    else:
        state, src, config_json = _read_ptuning(checkpoint)
        if config_json is not None and config_json.is_file():
            declared = read_json_object(config_json).get("pre_seq_len")
    if EMBEDDING_KEY not in state:
        raise ModelError(f"{src}: key {EMBEDDING_KEY!r} not found; not a THUDM P-tuning v2 checkpoint")
    extra = [k for k in state if not k.startswith(PREFIX) or (k != EMBEDDING_KEY and k[len(PREFIX):] not in _TRANS)]
    if extra:
        raise ModelError(f"{src}: unexpected key {extra[0]!r} in a P-tuning checkpoint")
    cfg = model.config
    emb = state[EMBEDDING_KEY]
    if emb.dim() != 2:
        raise ModelError(f"{src}: key {EMBEDDING_KEY!r} must be 2-D, got shape {tuple(emb.shape)}")
    pre_seq_len = emb.shape[0]
    if declared not in (None, pre_seq_len):
        raise ModelError(f"{src}: config.json says pre_seq_len={declared}, {EMBEDDING_KEY!r} has {pre_seq_len} rows")
    projected = any(k[len(PREFIX):] in _TRANS for k in state)
    kv_width = cfg.num_hidden_layers * 2 * cfg.hidden_size
    if projected:
        missing = [PREFIX + k for k in _TRANS if PREFIX + k not in state]
        if missing:
            raise ModelError(f"{src}: key {missing[0]!r} missing from a projected P-tuning checkpoint")
        hidden = state[PREFIX + "trans.0.weight"].shape[0]
        want = {EMBEDDING_KEY: (pre_seq_len, cfg.hidden_size), PREFIX + "trans.0.weight": (hidden, cfg.hidden_size),
                PREFIX + "trans.0.bias": (hidden,), PREFIX + "trans.2.weight": (kv_width, hidden),
                PREFIX + "trans.2.bias": (kv_width,)}
    else:
        hidden = None
        want = {EMBEDDING_KEY: (pre_seq_len, kv_width)}
    for key, shape in want.items():
        if tuple(state[key].shape) != shape:
            raise ModelError(f"{src}: key {key!r} has shape {tuple(state[key].shape)}, this ChatGLM-6B needs {shape}")

    # projected prefixes keep their MLP (peft's inference_mode would expect the projected table)
    config = v1_prefix_tuning_config(model, pre_seq_len, prefix_projection=projected, encoder_hidden_size=hidden,
                                     inference_mode=not is_trainable and not projected)
    peft_model = PeftModelForCausalLM(model, config, adapter_name=adapter_name)
    encoder = peft_model.prompt_encoder[adapter_name]
    ours = {"embedding.weight": state[EMBEDDING_KEY]}
    ours.update({_TRANS[k[len(PREFIX):]]: v for k, v in state.items() if k[len(PREFIX):] in _TRANS})
    dtype = encoder.embedding.weight.dtype
    encoder.load_state_dict({k: v.to(dtype) for k, v in ours.items()}, strict=True)
    if not is_trainable:
        for param in encoder.parameters():
            param.requires_grad_(False)
        peft_model.eval()
    return peft_model


def load_v1_lora(model: ChatGLM6BForCausalLM, folder: str | os.PathLike, *, adapter_name: str = "default",
                 is_trainable: bool = False):
    """PeftModel from a peft LoRA folder saved against THUDM names (XFL: `query_key_value`)."""
    from peft import PeftModelForCausalLM

    from .thudm import _load_bin, _load_safetensors

    folder = Path(folder)
    raw = read_json_object(folder / "adapter_config.json")
    if raw.get("peft_type") != "LORA":
        raise ModelError(f"{folder / 'adapter_config.json'}: key 'peft_type' is {raw.get('peft_type')!r}, expected 'LORA'")
    from peft import LoraConfig

    known = set(LoraConfig.__dataclass_fields__)
    try:
        config = LoraConfig(**{k: v for k, v in raw.items() if k in known})
    except (TypeError, ValueError) as e:
        raise ModelError(f"{folder / 'adapter_config.json'}: invalid LoRA config ({str(e)[:160]})") from None
    config.inference_mode = not is_trainable
    if (folder / "adapter_model.safetensors").is_file():
        weights = folder / "adapter_model.safetensors"
        state = _load_safetensors(weights)
    else:
        weights = folder / "adapter_model.bin"
        state = _load_bin(weights)
    try:
        peft_model = PeftModelForCausalLM(model, config, adapter_name=adapter_name)
    except ValueError as e:
        raise ModelError(f"{folder / 'adapter_config.json'}: target_modules do not fit ChatGLM-6B ({str(e)[:160]})") from None
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(peft_model, adapter_name=adapter_name).items()}
    for key, value in state.items():
        if key not in expected:
            raise ModelError(f"{weights}: adapter weight {key!r} has no place in ChatGLM-6B")
        if tuple(value.shape) != expected[key]:
            raise ModelError(f"{weights}: adapter weight {key!r} has shape {tuple(value.shape)}, needs {expected[key]}")
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ModelError(f"{weights}: adapter weight {missing[0]!r} missing ({len(missing)} in all)")
    set_peft_model_state_dict(peft_model, state, adapter_name=adapter_name)
    if not is_trainable:
        peft_model.eval()
    return peft_model
