"""Load a THUDM ChatGLM2/3 folder as transformers' GlmForCausalLM plus THUDM's tokenizer."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import GlmConfig, GlmForCausalLM

from xfed.errors import ModelError
from xfed.models.chatglm3.config import glm_config_from_thudm
from xfed.models.chatglm3.semantics import install_thudm_semantics
from xfed.models.chatglm3.tokenization import VOCAB_FILE, ChatGLM3Tokenizer
from xfed.models.chatglm3.weights import convert_state_dict
from xfed.models.checkpoint import has_weights, load_checkpoint

log = logging.getLogger(__name__)


def load_tokenizer(folder: str | Path, family: str) -> ChatGLM3Tokenizer:
    """THUDM's ChatGLM2/3 tokenizer from the folder's tokenizer.model."""
    path = Path(folder) / VOCAB_FILE
    if not path.is_file():
        raise ModelError(f"{path}: tokenizer file not found (ChatGLM2/3 folders carry THUDM's tokenizer.model)")
    try:
        tok = ChatGLM3Tokenizer(str(path), variant=family)
    except (OSError, RuntimeError, ValueError) as err:
        raise ModelError(f"{path}: not a SentencePiece model ({' '.join(str(err).split())[:160]})") from None
    if tok.n_sp != 64789:
        log.warning("%s: %d SentencePiece tokens where THUDM's has 64789; command token ids shift", path, tok.n_sp)
    return tok


def build_model(config: GlmConfig, state: dict[str, torch.Tensor] | None, *, device: Any = None) -> GlmForCausalLM:
    """GlmForCausalLM from a converted state dict (or randomly initialised when state is None)."""
    if state is None:
        model = GlmForCausalLM(config)
    else:
        # Build on the meta device so a 6B model is not allocated and initialised twice.
        with torch.device("meta"):
            model = GlmForCausalLM(config)
        model.load_state_dict(state, strict=True, assign=True)
        rotary = type(model.model.rotary_emb)(config=config)
        model.model.rotary_emb = rotary
    if device is not None:
        model.to(device)
    model.eval()
    return model


def expected_shapes(config: GlmConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        skeleton = GlmForCausalLM(config)
    return {name: tuple(p.shape) for name, p in skeleton.state_dict().items()}


def load_thudm_v2(folder: str | Path, cfg: dict[str, Any], family: str, *, dtype: torch.dtype,
                  device: Any = None, allow_random_init: bool = False):
    """(GlmForCausalLM, ChatGLM3Tokenizer) for a ChatGLM2/3 folder in THUDM's layout."""
    folder = Path(folder)
    tokenizer = load_tokenizer(folder, family)
    config = glm_config_from_thudm(cfg, source=str(folder / "config.json"), family=family,
                                   pad_token_id=tokenizer.pad_token_id)
    config.dtype = dtype
    if not has_weights(folder):
        if not allow_random_init:
            raise ModelError(f"{folder}: no weights (pytorch_model.bin, shards with pytorch_model.bin.index.json, "
                             "or model.safetensors); pass allow_random_init=True for a random model")
        log.warning("%s: no weights, initialising %s randomly", folder, family)
        with _default_dtype(dtype):
            model = build_model(config, None, device=device)
    else:
        ckpt = load_checkpoint(folder)
        state = convert_state_dict(ckpt.tensors, config, key_files=ckpt.key_files, checkpoint=ckpt.label,
                                   expected=expected_shapes(config), dtype=dtype)
        del ckpt
        model = build_model(config, state, device=device)
    install_thudm_semantics(model)
    return model, tokenizer


class _default_dtype:
    def __init__(self, dtype: torch.dtype):
        self.dtype, self.saved = dtype, None

    def __enter__(self):
        self.saved = torch.get_default_dtype()
        if self.dtype.is_floating_point:
            torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.saved)
