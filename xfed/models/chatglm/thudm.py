"""Import THUDM ChatGLM-6B folders and v1 adapters (P-tuning v2, XFL LoRA) without running their code.

A THUDM folder is read by this explicit importer: its `config.json` is mapped onto
`ChatGLM6BConfig`, weights come from `pytorch_model.bin` (or shards + index) through
`torch.load(weights_only=True)` or from safetensors, and `ice_text.model` makes the tokenizer.
The `auto_map` / `.py` files that come with the folder are never imported.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from xfed.errors import ModelError

from ..checkpoint import cast_in_place
from ..family import read_json_object
from ..quantization import V1_LINEARS, check_state, file_bits, install_quantized, quantize_state, wanted_bits
from .configuration_chatglm import ChatGLM6BConfig
from .modeling_chatglm import ChatGLM6BForCausalLM
from .tokenization_chatglm import VOCAB_FILE, ChatGLM6BTokenizer

# THUDM config keys -> ChatGLM6BConfig arguments
_CONFIG_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads",
    "inner_hidden_size": "intermediate_size",
    "layernorm_epsilon": "layer_norm_eps",
    "max_sequence_length": "max_position_embeddings",
    "position_encoding_2d": "position_encoding_2d",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "pad_token_id": "pad_token_id",
    "mask_token_id": "mask_token_id",
    "gmask_token_id": "gmask_token_id",
    "use_cache": "use_cache",
}
_REQUIRED = ("vocab_size", "hidden_size", "num_layers", "num_attention_heads")
# buffers THUDM saves but its own code ignores when loading
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)
_LM_HEAD = "lm_head.weight"
_EMBEDDINGS = "transformer.word_embeddings.weight"


def is_v1_config(config: dict) -> bool:
    """True for a ChatGLM-6B (GLM v1) config.json, THUDM's or ours (model_type chatglm6b)."""
    if not isinstance(config, dict):
        return False
    if config.get("model_type") == "chatglm6b":
        return True
    if config.get("model_type") != "chatglm":
        return False
    # ChatGLM2/3 configs carry multi_query / ffn_hidden_size / kv_channels; v1 has these instead
    v2_keys = ("multi_query_attention", "ffn_hidden_size", "kv_channels", "padded_vocab_size")
    if any(k in config for k in v2_keys):
        return False
    return "position_encoding_2d" in config or "inner_hidden_size" in config


def config_from_thudm(raw: dict, source: str = "config.json") -> ChatGLM6BConfig:
    """Map THUDM's ChatGLM-6B config.json onto ChatGLM6BConfig (ModelError names the bad key)."""
    if not is_v1_config(raw):
        raise ModelError(f"{source}: not a ChatGLM-6B (v1) config (model_type={raw.get('model_type')!r})")
    for key in _REQUIRED:
        if not isinstance(raw.get(key), int) or raw[key] <= 0:
            raise ModelError(f"{source}: key {key!r} must be a positive integer, got {raw.get(key)!r}")
    file_bits(raw, source)  # 4/8-bit folders load packed (from_thudm_folder); other widths are refused here
    if raw["hidden_size"] % (2 * raw["num_attention_heads"]) or (raw["hidden_size"] // raw["num_attention_heads"]) % 4:
        raise ModelError(f"{source}: hidden_size {raw['hidden_size']} does not split into "
                         f"{raw['num_attention_heads']} heads with 2-D rotary halves")
    kwargs = {ours: raw[theirs] for theirs, ours in _CONFIG_KEYS.items() if raw.get(theirs) is not None}
    return ChatGLM6BConfig(**kwargs)


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"{path}: file not found") from None
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path}: not a readable PyTorch weight file ({first[:160]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: expected a dict of tensors")
    return state


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise ModelError(f"{path}: file not found") from None
    except Exception as e:  # safetensors raises its own SafetensorError for corrupt headers
        raise ModelError(f"{path}: not a readable safetensors file ({str(e)[:160]})") from None


def read_weights(folder: Path, transform=None) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """All tensors of a model folder and, per key, the file it came from; `transform(tensors)` edits
    each file's tensors in place as soon as it is read (so quantizing never holds the whole fp16 model)."""
    candidates = (
        ("model.safetensors.index.json", _load_safetensors),
        ("model.safetensors", _load_safetensors),
        ("pytorch_model.bin.index.json", _load_bin),
        ("pytorch_model.bin", _load_bin),
    )
    for name, loader in candidates:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            index = read_json_object(path)
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ModelError(f"{path}: missing or empty 'weight_map'")
            files: dict[str, list[str]] = {}
            for key, fn in weight_map.items():
                if not isinstance(fn, str) or "/" in fn or "\\" in fn or fn.startswith("."):
                    raise ModelError(f"{path}: key {key!r} points at a bad shard name {fn!r}")
                files.setdefault(fn, []).append(key)
            state, origin = {}, {}
            for fn, keys in files.items():
                shard = loader(folder / fn)
                for key in keys:
                    if key not in shard:
                        raise ModelError(f"{folder / fn}: weight {key!r} listed in {name} is missing")
                if transform is not None:
                    transform(shard)
                for key, value in shard.items():
                    state[key] = value
                    origin[key] = folder / fn
            return state, origin
        state = loader(path)
        if transform is not None:
            transform(state)
        return state, {k: path for k in state}
    raise ModelError(f"{folder}: no weights (pytorch_model.bin, shards + index, or model.safetensors)")


def _resolve_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "auto": torch.float16}
    if str(dtype) not in names:
        raise ModelError(f"unknown dtype {dtype!r} (float32, float16 or bfloat16)")
    return names[str(dtype)]


def load_v1_tokenizer(folder: str | os.PathLike) -> ChatGLM6BTokenizer:
    """The ChatGLM-6B tokenizer of a THUDM folder (ice_text.model + tokenizer_config.json options)."""
    folder = Path(folder)
    vocab = folder / VOCAB_FILE
    if not vocab.is_file():
        raise ModelError(f"{vocab}: tokenizer file not found (ChatGLM-6B needs {VOCAB_FILE})")
    options = {}
    tok_cfg = folder / "tokenizer_config.json"
    if tok_cfg.is_file():
        raw = read_json_object(tok_cfg)
        for key in ("bos_token", "eos_token", "end_token", "mask_token", "gmask_token", "pad_token",
                    "unk_token", "remove_space", "do_lower_case"):
            if isinstance(raw.get(key), (str, bool)):
                options[key] = raw[key]
    try:
        return ChatGLM6BTokenizer(str(vocab), **options)
    except (RuntimeError, OSError) as e:
        raise ModelError(f"{vocab}: not a readable sentencepiece model ({str(e)[:160]})") from None


def from_thudm_folder(
    path: str | os.PathLike, *, dtype=None, device=None, allow_random_init: bool = False,
    quantization_bit: int | None = None,
) -> tuple[ChatGLM6BForCausalLM, ChatGLM6BTokenizer]:
    """Load a ChatGLM-6B folder as (ChatGLM6BForCausalLM in eval mode, ChatGLM6BTokenizer).

    Reads THUDM's layout (model_type "chatglm") and our own saved copies (model_type "chatglm6b").
    dtype: torch dtype or name (default float32; the fp16 weights on disk are cast). Every mismatch
    between the folder and the architecture raises a one-line ModelError naming the file and key.
    allow_random_init: a folder without weight files gives a randomly initialised model.
    A THUDM int4/int8 folder (config.json quantization_bit 4 or 8) keeps its four linears per layer
    packed (xfed.models.quantization); `quantization_bit` quantizes an fp16 folder on load with
    THUDM's arithmetic (fp32 division on CPU, fp16 on CUDA, as THUDM's quantize() does there).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ModelError(f"{folder}: model folder not found")
    raw = read_json_object(folder / "config.json")
    if raw.get("model_type") == ChatGLM6BConfig.model_type:
        config = ChatGLM6BConfig.from_dict({k: v for k, v in raw.items() if k != "model_type"})
    else:
        config = config_from_thudm(raw, str(folder / "config.json"))
    tokenizer = load_v1_tokenizer(folder)
    target = _resolve_dtype(dtype)
    bits, quantize_here = wanted_bits(raw, quantization_bit, str(folder / "config.json"))
    if allow_random_init and not _has_weights(folder):
        if bits and not quantize_here:
            raise ModelError(f"{folder}: a quantized (quantization_bit {bits}) folder needs its weights")
        model = ChatGLM6BForCausalLM(config).to(dtype=target)
        if bits:
            _quantize_modules(model, bits, device)
        return _finish(model, config, target, device), tokenizer
    modules = [f"transformer.layers.{i}.{name}" for i in range(config.num_hidden_layers) for name in V1_LINEARS] \
        if bits else []
    qdtype = _quantize_dtype(device)
    state, origin = read_weights(folder, (lambda part: quantize_state(part, modules, bits, qdtype))
                                 if quantize_here else None)
    state = {k: v for k, v in state.items() if not k.endswith(_IGNORED_SUFFIXES)}
    # THUDM's model ties lm_head to the word embeddings and loads lm_head.weight last, so that
    # tensor is what both layers use (in released checkpoints the two are equal anyway).
    if config.tie_word_embeddings and _LM_HEAD in state:
        if _EMBEDDINGS in state and state[_EMBEDDINGS].shape != state[_LM_HEAD].shape:
            raise ModelError(f"{origin[_LM_HEAD]}: {_LM_HEAD!r} has shape {tuple(state[_LM_HEAD].shape)}, "
                             f"{_EMBEDDINGS!r} has {tuple(state[_EMBEDDINGS].shape)}")
        state[_EMBEDDINGS] = state.pop(_LM_HEAD)
        origin[_EMBEDDINGS] = origin[_LM_HEAD]

    with torch.device("meta"):
        model = ChatGLM6BForCausalLM(config)
    packed: set[str] = set()
    if bits:
        config.quantization_bit = bits
        install_quantized(model, model.transformer.layers, V1_LINEARS, bits, "transformer.layers.")
        shapes = {m: (model.get_submodule(m).out_features, model.get_submodule(m).in_features) for m in modules}
        check_state(state, shapes, bits, lambda key: str(origin.get(key, folder)))
        packed = {m + s for m in modules for s in (".weight", ".weight_scale")}
    expected = model.state_dict()
    for key, value in state.items():
        if key not in expected:
            if key.startswith("transformer.prefix_encoder."):
                raise ModelError(f"{origin[key]}: weight {key!r} is a P-tuning prefix; load the base model, "
                                 "then apply the checkpoint with load_adapter")
            raise ModelError(f"{origin[key]}: unexpected weight {key!r} for a ChatGLM-6B with this config.json")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ModelError(
                f"{origin[key]}: weight {key!r} has shape {tuple(value.shape)}, "
                f"config.json implies {tuple(expected[key].shape)}"
            )
        if not value.is_floating_point() and key not in packed:
            raise ModelError(f"{origin[key]}: weight {key!r} has dtype {value.dtype}, expected floating point")
    missing = sorted(set(expected) - set(state) - ({_LM_HEAD} if config.tie_word_embeddings else set()))
    if missing:
        first_file = next(iter(origin.values()))
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelError(f"{first_file}: missing weight {missing[0]!r}{more}")
    for key in list(state):  # one tensor at a time, so fp16 and fp32 copies never coexist in full
        if key not in packed:  # packed weights and THUDM's scales keep their stored dtype
            state[key] = cast_in_place(state[key], target)
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.transformer.word_embeddings.weight
    return _finish(model, config, target, device), tokenizer


def _quantize_dtype(device) -> torch.dtype:
    """THUDM's ChatGLM-6B quantize() divides in fp32 on CPU and in fp16 on CUDA."""
    return torch.float16 if device is not None and torch.device(device).type == "cuda" else torch.float32


def _quantize_modules(model: ChatGLM6BForCausalLM, bits: int, device) -> None:
    from ..quantization import QuantizedLinear, replace_linears

    model.config.quantization_bit = bits
    for layer in model.transformer.layers:
        replace_linears(layer, V1_LINEARS, lambda lin: QuantizedLinear.from_linear(lin, bits, _quantize_dtype(device)))


def _has_weights(folder: Path) -> bool:
    names = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin")
    return any((folder / n).is_file() for n in names)


def _finish(model: ChatGLM6BForCausalLM, config: ChatGLM6BConfig, dtype: torch.dtype, device) -> ChatGLM6BForCausalLM:
    model.config.dtype = dtype
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    if device is not None:
        model.to(device)
    model.eval()
    return model


def build_v1_example(
    tokenizer,
    prompt: str,
    answer: str,
    max_src: int | None = None,
    max_dst: int | None = None,
    *,
    max_source_length: int | None = None,
    max_target_length: int | None = None,
) -> tuple[list[int], list[int]]:
    """One ChatGLM-6B training example as THUDM's p-tuning `main.py` builds it.

    input_ids = prompt[:max_src-1] + [gMASK] + <sop> + answer[:max_dst-2] + <eop>;
    labels = -100 up to (not including) <sop>, then the ids themselves (<sop>, answer, <eop>).
    `max_source_length` / `max_target_length` are THUDM's names for max_src / max_dst; None: no limit.
    """
    max_src = max_src if max_src is not None else max_source_length
    max_dst = max_dst if max_dst is not None else max_target_length
    if (max_src is not None and max_src < 1) or (max_dst is not None and max_dst < 2):
        raise ValueError(f"max_src must be >= 1 and max_dst >= 2, got {max_src}, {max_dst}")
    a_ids = tokenizer.encode(prompt, add_special_tokens=False)
    b_ids = tokenizer.encode(answer, add_special_tokens=False)
    if max_src is not None:
        a_ids = a_ids[: max_src - 1]
    if max_dst is not None:
        b_ids = b_ids[: max_dst - 2]
    input_ids = tokenizer.build_inputs_with_special_tokens(a_ids, b_ids)
    context_length = input_ids.index(tokenizer.bos_token_id)
    labels = [-100] * context_length + input_ids[context_length:]
    return input_ids, labels
