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
from xfed.models.chatglm3.weights import NATIVE_QUANTIZED, convert_state_dict, qkv_split_sizes
from xfed.models.checkpoint import has_weights, load_checkpoint
from xfed.models.quantization import (
    QuantizedLinear,
    check_state,
    install_quantized,
    quantize_state,
    replace_linears,
    wanted_bits,
)

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


def build_model(config: GlmConfig, state: dict[str, torch.Tensor] | None, *, device: Any = None,
                bits: int = 0) -> GlmForCausalLM:
    """GlmForCausalLM from a converted state dict (or randomly initialised when state is None).
    `bits` 4/8: the layers' linears are THUDM-packed QuantizedLinear modules (state holds them packed)."""
    if state is None:
        model = GlmForCausalLM(config)
        if bits:
            replace_all(model, bits, lambda lin: QuantizedLinear.from_linear(lin, bits, torch.float16))
    else:
        # Build on the meta device so a 6B model is not allocated and initialised twice.
        with torch.device("meta"):
            model = GlmForCausalLM(config)
            if bits:
                _install(model, bits)
        model.load_state_dict(state, strict=True, assign=True)
        rotary = type(model.model.rotary_emb)(config=config)
        model.model.rotary_emb = rotary
    if bits:
        config.quantization_bit = bits
    if device is not None:
        model.to(device)
    model.eval()
    return model


def replace_all(model: GlmForCausalLM, bits: int, factory) -> list[str]:
    for layer in model.model.layers:
        replace_linears(layer, NATIVE_QUANTIZED, factory)
    return [f"model.layers.{i}.{name}" for i in range(len(model.model.layers)) for name in NATIVE_QUANTIZED]


def _install(model: GlmForCausalLM, bits: int) -> list[str]:
    return install_quantized(model, model.model.layers, NATIVE_QUANTIZED, bits, "model.layers.")


def expected_shapes(config: GlmConfig, bits: int = 0) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        skeleton = GlmForCausalLM(config)
        if bits:
            _install(skeleton, bits)
    return {name: tuple(p.shape) for name, p in skeleton.state_dict().items()}


def thudm_linear_shapes(config: GlmConfig) -> dict[str, tuple[int, int]]:
    """(out, in) of THUDM's four quantized linears per layer, by THUDM module name."""
    q, k, v = qkv_split_sizes(config)
    hidden, ffn = config.hidden_size, config.intermediate_size
    per_layer = {"self_attention.query_key_value": (q + k + v, hidden), "self_attention.dense": (hidden, q),
                 "mlp.dense_h_to_4h": (2 * ffn, hidden), "mlp.dense_4h_to_h": (hidden, ffn)}
    return {f"transformer.encoder.layers.{i}.{name}": shape
            for i in range(config.num_hidden_layers) for name, shape in per_layer.items()}


def load_thudm_v2(folder: str | Path, cfg: dict[str, Any], family: str, *, dtype: torch.dtype,
                  device: Any = None, allow_random_init: bool = False, quantization_bit: int | None = None):
    """(GlmForCausalLM, ChatGLM3Tokenizer) for a ChatGLM2/3 folder in THUDM's layout.

    A THUDM int4/int8 folder keeps its linears packed; `quantization_bit` quantizes an fp16 folder on
    load with THUDM's arithmetic (ChatGLM2/3's half_weight_to_int: fp16 division, its only path)."""
    folder = Path(folder)
    tokenizer = load_tokenizer(folder, family)
    source = str(folder / "config.json")
    config = glm_config_from_thudm(cfg, source=source, family=family, pad_token_id=tokenizer.pad_token_id)
    config.dtype = dtype
    bits, quantize_here = wanted_bits(cfg, quantization_bit, source)
    if not has_weights(folder):
        if not allow_random_init:
            raise ModelError(f"{folder}: no weights (pytorch_model.bin, shards with pytorch_model.bin.index.json, "
                             "or model.safetensors); pass allow_random_init=True for a random model")
        if bits and not quantize_here:
            raise ModelError(f"{folder}: a quantized (quantization_bit {bits}) folder needs its weights")
        log.warning("%s: no weights, initialising %s randomly", folder, family)
        with _default_dtype(dtype):
            model = build_model(config, None, device=device, bits=bits)
    else:
        shapes = thudm_linear_shapes(config) if bits else {}
        ckpt = load_checkpoint(folder, (lambda part: quantize_state(part, list(shapes), bits, torch.float16))
                               if quantize_here else None)
        packed: frozenset[str] = frozenset()
        if bits:
            check_state(ckpt.tensors, shapes, bits, lambda key: ckpt.key_files.get(key, ckpt.label))
            with torch.device("meta"):
                skeleton = GlmForCausalLM(config)
                packed = frozenset(m + ".weight" for m in _install(skeleton, bits))
            del skeleton
        state = convert_state_dict(ckpt.tensors, config, key_files=ckpt.key_files, checkpoint=ckpt.label,
                                   expected=expected_shapes(config, bits), dtype=dtype, packed=packed)
        del ckpt
        model = build_model(config, state, device=device, bits=bits)
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
