"""load_pretrained: any supported local model folder -> (transformers causal LM, tokenizer).

Never runs Python shipped inside a model folder (no trust_remote_code) and never downloads
(local_files_only): THUDM ChatGLM folders are loaded by xfed's own code, everything else
through transformers' Auto classes.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from xfed.errors import ModelError
from xfed.models.checkpoint import has_weights
from xfed.models.family import detect_family, read_config

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """torch dtype from a dtype, a name ('float16', 'bf16' …) or None (float32: weights on disk are cast)."""
    if dtype is None or dtype == "auto":
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ModelError(f"dtype {dtype!r} not supported (use one of {', '.join(sorted(_DTYPES))})")
    return _DTYPES[key]


def resolve_device(device: Any) -> torch.device | None:
    """torch.device for `device` (None stays None: CPU); ModelError for a malformed or absent device."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ModelError(f"device {device!r} is not a torch device ({_one_line(err)})") from None
    if dev.type == "cuda" and (not torch.cuda.is_available()
                               or (dev.index is not None and dev.index >= torch.cuda.device_count())):
        raise ModelError(f"device {device!r} requested but this machine has "
                         f"{torch.cuda.device_count() if torch.cuda.is_available() else 'no'} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device {device!r} requested but MPS is not available")
    return dev


def load_pretrained(path: str | Path, *, dtype: torch.dtype | str | None = None, device: Any = None,
                    allow_random_init: bool = False, quantization_bit: int | None = None,
                    bnb: dict[str, Any] | None = None):
    """(model, tokenizer) for a local folder: ChatGLM-6B, ChatGLM2/3-6B (as GlmForCausalLM) or any
    folder AutoModelForCausalLM loads natively. A folder without weights is a ModelError unless
    `allow_random_init`. Float weights are cast to `dtype` (default float32).

    THUDM int4/int8 folders (config.json quantization_bit 4/8) keep their linears packed and
    dequantize per call with THUDM's arithmetic; `quantization_bit` 4/8 quantizes an fp16 THUDM
    folder on load the same way (xfed.models.quantization). `bnb` (load_in_4bit / load_in_8bit and
    bnb_4bit_* keys) gives a bitsandbytes QLoRA base on CUDA (xfed.models.bnb), prepared for k-bit
    training; refused on CPU."""
    folder = Path(path).expanduser()
    family = detect_family(folder)
    cfg = read_config(folder)
    torch_dtype = resolve_dtype(dtype)
    device = resolve_device(device)
    if bnb:
        return _load_bnb(folder, family, cfg, bnb, dtype, device, allow_random_init)
    if family == "chatglm":
        return _load_v1(folder, torch_dtype, device, allow_random_init, quantization_bit)
    if family in ("chatglm2", "chatglm3") and cfg.get("model_type") == "chatglm":
        from xfed.models.chatglm3.loader import load_thudm_v2
        return load_thudm_v2(folder, cfg, family, dtype=torch_dtype, device=device,
                             allow_random_init=allow_random_init, quantization_bit=quantization_bit)
    if quantization_bit:
        raise ModelError(f"{folder / 'config.json'}: quantization_bit (THUDM weight-only int4/int8) applies to "
                         "THUDM ChatGLM-6B/2/3 folders only; for other models use load_in_4bit/load_in_8bit on CUDA")
    model = _load_native_model(folder, torch_dtype, device, allow_random_init)
    if family in ("chatglm2", "chatglm3"):
        from xfed.models.chatglm3.loader import load_tokenizer
        from xfed.models.chatglm3.semantics import install_thudm_semantics
        install_thudm_semantics(model)
        return model, load_tokenizer(folder, family)
    return model, _load_native_tokenizer(folder)


def _load_bnb(folder: Path, family: str, cfg: dict[str, Any], options: dict[str, Any], dtype: Any, device: Any,
              allow_random_init: bool):
    from xfed.models import bnb as qlora

    options = qlora.bnb_options(options)
    key = "load_in_8bit" if options.get("load_in_8bit") else "load_in_4bit"
    qlora.require_cuda(device, key)
    if cfg.get("quantization_bit"):
        raise ModelError(f"{folder / 'config.json'}: a THUDM quantization_bit folder cannot be re-quantized with "
                         f"{key}; use the fp16 weights")
    compute = resolve_dtype(dtype) if dtype is not None else (
        torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    config = qlora.bits_and_bytes_config(options, compute)
    qlora.import_bnb()
    if family == "auto":
        from transformers import AutoModelForCausalLM
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=config, dtype=compute,
                                                         device_map={"": device.index or 0}, local_files_only=True,
                                                         trust_remote_code=False)
        except (OSError, RuntimeError, ValueError) as err:
            raise ModelError(f"{folder}: bitsandbytes load failed ({_one_line(err)})") from None
        tokenizer = _load_native_tokenizer(folder)
    else:
        model, tokenizer = load_pretrained(folder, dtype=compute, allow_random_init=allow_random_init)
        qlora.quantize_linears(model, config, device)
    model.config.quantization_config = config
    model = qlora.prepare_for_kbit_training(model)
    model.eval()
    return model, tokenizer


def _load_v1(folder: Path, dtype: torch.dtype, device: Any, allow_random_init: bool,
             quantization_bit: int | None = None):
    from xfed.models.chatglm import from_thudm_folder  # lazily: importing it registers the v1 family

    return from_thudm_folder(folder, dtype=dtype, device=device, allow_random_init=allow_random_init,
                             quantization_bit=quantization_bit or None)


def _load_native_model(folder: Path, dtype: torch.dtype, device: Any, allow_random_init: bool):
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as err:
        raise ModelError(f"{folder / 'config.json'}: transformers cannot load this config without remote code "
                         f"({_one_line(err)})") from None
    if not has_weights(folder):
        if not allow_random_init:
            raise ModelError(f"{folder}: no weights (model.safetensors, pytorch_model.bin or a shard index); "
                             "pass allow_random_init=True for a random model")
        log.warning("%s: no weights, initialising %s randomly", folder, config.model_type)
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
        except ValueError as err:
            raise ModelError(f"{folder / 'config.json'}: not a causal LM transformers knows ({_one_line(err)})") \
                from None
    else:
        from safetensors import SafetensorError

        try:
            # mismatched shapes are reported by _check_loading_info naming the weight, instead of
            # transformers' "look at the above report!" pointing at a log the user never sees
            model, info = AutoModelForCausalLM.from_pretrained(
                folder, config=config, dtype=dtype, local_files_only=True, trust_remote_code=False,
                output_loading_info=True, ignore_mismatched_sizes=True)
        except ValueError as err:
            raise ModelError(f"{folder / 'config.json'}: not a causal LM transformers knows ({_one_line(err)})") \
                from None
        except (OSError, RuntimeError, SafetensorError) as err:
            from xfed.diskio import FULL_HINT, is_disk_full

            if is_disk_full(err):  # a folder being written is full; the model folder is only read
                where = getattr(err, "filename", None) or "a work or temp folder"
                raise ModelError(f"no space left on device writing {where} while loading {folder} "
                                 f"({FULL_HINT})") from None
            files = ", ".join(p.name for p in _weight_names(folder))
            raise ModelError(f"{folder}: weights could not be loaded from {files} ({_loader_text(err)})") from None
        _check_loading_info(folder, info)
    if device is not None:
        model.to(device)
    model.eval()
    return model


def _check_loading_info(folder: Path, info: dict[str, Any]) -> None:
    files = ", ".join(p.name for p in _weight_names(folder))
    for kind, label in (("missing_keys", "missing"), ("unexpected_keys", "unexpected"),
                        ("mismatched_keys", "with the wrong shape")):
        keys = sorted(info.get(kind) or [])
        if keys:
            first = keys[0]
            if isinstance(first, tuple):
                name, got, want = (list(first) + [None, None])[:3]
                raise ModelError(f"{folder / files}: weight {name!r} {label}: {tuple(got or ())} in the file, "
                                 f"{tuple(want or ())} expected")
            raise ModelError(f"{folder / files}: weight {first!r} {label} ({len(keys)} in all)")


def _weight_names(folder: Path) -> list[Path]:
    from xfed.models.checkpoint import weight_files
    return weight_files(folder)[:1] or [Path("weights")]


def _load_native_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    import xfed.models.chatglm3.tokenization  # noqa: F401  (registers ChatGLM3Tokenizer for saved copies)
    try:
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (ValueError, OSError, KeyError, TypeError, AttributeError, ImportError) as err:
        raise ModelError(f"{folder}: no usable tokenizer files (tokenizer.json / tokenizer_config.json …): "
                         f"{_one_line(err)}") from None
    # transformers 5 builds an empty tokenizer of the model's class when the folder has no tokenizer files
    if len(tok.get_vocab()) <= len(set(tok.all_special_tokens)):
        raise ModelError(f"{folder}: no tokenizer files (tokenizer.json, tokenizer.model, vocab.json …); the "
                         "tokenizer transformers built has no vocabulary")
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
        log.info("%s: tokenizer has no pad token; padding with eos %r", folder, tok.eos_token)
    return tok


def _loader_text(err: BaseException) -> str:
    """transformers' message, minus its pointer to a load report printed to a log the user never sees."""
    text = _one_line(err)
    for phrase in ("For details look at the above report!",
                   "For details look at the `CONVERSION` entries of the above report!"):
        text = text.replace(phrase, "(transformers' load report is in the stage log)")
    return text


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:240] + ("…" if len(text) > 240 else "")
