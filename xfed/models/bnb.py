"""bitsandbytes QLoRA bases on CUDA: load_in_4bit (nf4/fp4, double quantization, compute dtype) and
load_in_8bit, described by transformers' BitsAndBytesConfig.

bitsandbytes is imported only here and only on CUDA (it is not a requirement: CPU builds never need it).
On CPU it is refused: bitsandbytes' CPU 4-bit path runs forward but LoRA through it does not learn.
Native transformers folders load through from_pretrained(quantization_config=...); THUDM ChatGLM folders
(xfed's own loaders) are loaded in the compute dtype, then their decoder linears are replaced by
bitsandbytes layers, which quantize as they move to the GPU. lm_head / output_layer stays unquantized,
as transformers' integration leaves it.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xfed.errors import ModelError

_KEYS = ("load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant",
         "bnb_4bit_compute_dtype")


def bnb_options(options: dict[str, Any]) -> dict[str, Any]:
    """The bitsandbytes keys of model_info.config (empty when neither load_in_4bit nor load_in_8bit)."""
    found = {k: options[k] for k in _KEYS if k in options}
    if not (found.get("load_in_4bit") or found.get("load_in_8bit")):
        return {}
    if found.get("load_in_4bit") and found.get("load_in_8bit"):
        raise ModelError("model_info.config: load_in_4bit and load_in_8bit are exclusive; choose one")
    qt = found.get("bnb_4bit_quant_type", "nf4")
    if qt not in ("nf4", "fp4"):
        raise ModelError(f"model_info.config.bnb_4bit_quant_type: {qt!r} is not nf4 or fp4")
    return found


def bits_and_bytes_config(options: dict[str, Any], compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    if options.get("load_in_8bit"):
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=options.get("bnb_4bit_quant_type", "nf4"),
                              bnb_4bit_use_double_quant=bool(options.get("bnb_4bit_use_double_quant", True)),
                              bnb_4bit_compute_dtype=compute_dtype)


def require_cuda(device: Any, key: str) -> None:
    if device is None or torch.device(device).type != "cuda" or not torch.cuda.is_available():
        raise ModelError(f"model_info.config.{key}: bitsandbytes 4/8-bit bases need a CUDA GPU (on CPU LoRA "
                         "through them does not learn); on CPU use quantization_bit 4 or 8 (THUDM int4/int8)")


def import_bnb():
    try:
        import bitsandbytes as bnb
    except ImportError as err:
        raise ModelError(f"load_in_4bit/load_in_8bit need the bitsandbytes package on this CUDA machine "
                         f"(pip install bitsandbytes): {err}") from None
    return bnb


def quantize_linears(model: nn.Module, config, device: Any, skip: tuple[str, ...] = ("lm_head", "output_layer")
                     ) -> int:
    """Replace every nn.Linear but `skip` by a bitsandbytes layer on `device`; returns how many."""
    bnb = import_bnb()
    count = 0
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear or name.split(".")[-1] in skip:
            continue
        bias = module.bias is not None
        if config.load_in_8bit:
            new = bnb.nn.Linear8bitLt(module.in_features, module.out_features, bias=bias, has_fp16_weights=False,
                                      threshold=config.llm_int8_threshold)
            new.weight = bnb.nn.Int8Params(module.weight.data.to(torch.float16), requires_grad=False,
                                           has_fp16_weights=False)
        else:
            new = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=bias,
                                    compute_dtype=config.bnb_4bit_compute_dtype,
                                    compress_statistics=config.bnb_4bit_use_double_quant,
                                    quant_type=config.bnb_4bit_quant_type)
            new.weight = bnb.nn.Params4bit(module.weight.data, requires_grad=False,
                                           compress_statistics=config.bnb_4bit_use_double_quant,
                                           quant_type=config.bnb_4bit_quant_type)
        if bias:
            new.bias = nn.Parameter(module.bias.data, requires_grad=False)
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner) if owner else model, attr, new.to(device))  # quantizes on the move
        count += 1
    model.to(device)
    model.is_loaded_in_4bit = not config.load_in_8bit
    model.is_loaded_in_8bit = bool(config.load_in_8bit)
    model.is_quantized = True
    return count


def prepare_for_kbit_training(model: nn.Module, gradient_checkpointing: bool = False) -> nn.Module:
    """peft's k-bit preparation (norms in fp32, input grads for checkpointing)."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
