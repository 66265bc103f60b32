"""Loading saved adapters onto a loaded model: xfed/peft adapter folders, XFL LoRA on THUDM module
names (mapped exactly onto split projections), and THUDM P-tuning v2 checkpoints.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from xfed.errors import ModelError
from xfed.models.adapters import (
    THUDM_TO_GLM,
    after_peft,
    is_converted_chatglm,
    is_v1,
    linear_module_names,
    model_type,
    name_list,
    resolve_target_modules,
    v1_module,
)
from xfed.models.checkpoint import read_weight_file
from xfed.models.family import read_json_object

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PTUNING_WEIGHTS = ("pytorch_model.bin", "model.safetensors")
PREFIX_KEY = "transformer.prefix_encoder.embedding.weight"


def load_adapter(model: torch.nn.Module, path: str | Path, *, adapter_name: str = "default",
                 is_trainable: bool = False):
    """PeftModel with the adapter at `path` applied to `model`.

    `path`: a peft adapter folder (xfed's own, or XFL's LoRA on THUDM names, mapped exactly), or a
    THUDM P-tuning v2 checkpoint (folder or file holding transformer.prefix_encoder.*).
    """
    path = Path(path).expanduser()
    if path.is_file():
        return _load_ptuning(model, path, None, adapter_name, is_trainable)
    if not path.is_dir():
        raise ModelError(f"{path}: adapter not found")
    if (path / ADAPTER_CONFIG).is_file():
        return _load_peft_folder(model, path, adapter_name, is_trainable)
    for name in PTUNING_WEIGHTS:
        if (path / name).is_file():
            return _load_ptuning(model, path / name, path / "config.json", adapter_name, is_trainable)
    raise ModelError(f"{path}: neither a peft adapter ({ADAPTER_CONFIG}) nor a THUDM P-tuning checkpoint "
                     f"({' / '.join(PTUNING_WEIGHTS)})")


def _peft_config_from_dict(data: dict[str, Any], source: Path):
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    peft_type = data.get("peft_type")
    if peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise ModelError(f"{source}: key 'peft_type' = {peft_type!r} is not a peft adapter type")
    cls = PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]
    known = set(cls.__dataclass_fields__)
    dropped = sorted(k for k in data if k not in known)
    if dropped:
        log.info("%s: ignoring keys peft %s does not know: %s", source, peft_type, dropped)
    try:
        config = cls(**{k: v for k, v in data.items() if k in known})
    except (TypeError, ValueError) as err:
        raise ModelError(f"{source}: invalid {peft_type} config ({' '.join(str(err).split())[:200]})") from None
    return config


def _adapter_weights(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    for name in ADAPTER_WEIGHTS:
        if (folder / name).is_file():
            return folder / name, read_weight_file(folder / name)
    raise ModelError(f"{folder}: no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})")


def _load_peft_folder(model, folder: Path, adapter_name: str, is_trainable: bool):
    from peft import PeftType

    data = read_json_object(folder / ADAPTER_CONFIG)
    if data.get("peft_type") == "LORA" and is_v1(model):
        return v1_module().load_v1_lora(model, folder, adapter_name=adapter_name, is_trainable=is_trainable)
    config = _peft_config_from_dict(data, folder / ADAPTER_CONFIG)
    config.inference_mode = not is_trainable
    weights_file, state = _adapter_weights(folder)
    if config.peft_type == PeftType.LORA:
        targets = name_list(config.target_modules)
        available = set(linear_module_names(model))
        names = [targets] if isinstance(targets, str) else (targets or [])
        if isinstance(targets, list) and not set(names) <= available:
            return _load_mapped_lora(model, config, state, weights_file, adapter_name)
    peft_model = _new_peft_model(model, config, adapter_name)
    _set_state(peft_model, state, weights_file, adapter_name, config)
    return peft_model


def _new_peft_model(model, config, adapter_name: str):
    from peft import PeftModel

    if config.task_type in (None, "CAUSAL_LM"):
        from peft import PeftModelForCausalLM as cls
    else:
        cls = PeftModel
    try:
        peft_model = cls(model, config, adapter_name=adapter_name)
    except (ValueError, RuntimeError, KeyError, AttributeError) as err:
        raise ModelError(f"adapter config does not fit {type(model).__name__} "
                         f"({' '.join(str(err).split())[:200]})") from None
    after_peft(model, config)
    if config.inference_mode:
        peft_model.eval()
    return peft_model


def _set_state(peft_model, state: dict[str, torch.Tensor], source: Path, adapter_name: str, config) -> None:
    from peft import PeftType
    from peft.utils import set_peft_model_state_dict

    expected = _expected_adapter_shapes(peft_model, adapter_name)
    normalised = {_strip_adapter_name(k, adapter_name): v for k, v in state.items()}
    if config.peft_type == PeftType.LORA:
        for key, tensor in normalised.items():
            if ".lora_" not in key and not key.endswith(".bias"):
                continue
            want = expected.get(key)
            if want is None:
                raise ModelError(f"{source}: adapter weight {key!r} has no place in {type(peft_model.base_model.model).__name__}")
            if tuple(tensor.shape) != want:
                raise ModelError(f"{source}: adapter weight {key!r} has shape {tuple(tensor.shape)}, the model "
                                 f"needs {want}")
        missing = [k for k in expected if ".lora_" in k and k not in normalised]
        if missing:
            raise ModelError(f"{source}: adapter weight {missing[0]!r} missing ({len(missing)} in all)")
    elif config.is_prompt_learning:
        key = "prompt_embeddings"
        if key not in normalised:
            raise ModelError(f"{source}: adapter weight {key!r} missing")
        want = expected.get(key)
        if want is not None and tuple(normalised[key].shape) != want:
            raise ModelError(f"{source}: adapter weight {key!r} has shape {tuple(normalised[key].shape)}, the "
                             f"model needs {want}")
    try:
        result = set_peft_model_state_dict(peft_model, normalised, adapter_name=adapter_name)
    except (RuntimeError, ValueError, KeyError) as err:
        raise ModelError(f"{source}: adapter weights do not fit the model ({' '.join(str(err).split())[:200]})") \
            from None
    if config.is_prompt_learning:
        return  # peft loads the prompt encoder itself and lists its key as "unexpected"
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if adapter_name in k or "lora_" in k]
    if unexpected:
        raise ModelError(f"{source}: adapter weight {unexpected[0]!r} unexpected for this model")


def _strip_adapter_name(key: str, adapter_name: str) -> str:
    return key.replace(f".{adapter_name}.", ".") if adapter_name != "default" else key.replace(".default.", ".")


def _expected_adapter_shapes(peft_model, adapter_name: str) -> dict[str, tuple[int, ...]]:
    from peft.utils import get_peft_model_state_dict

    return {k: tuple(v.shape) for k, v in get_peft_model_state_dict(peft_model, adapter_name=adapter_name,
                                                                       save_embedding_layers=False).items()}


# --- LoRA saved against THUDM module names ----------------------------------------------------------
_LORA_KEY = re.compile(r"^(?P<path>.+)\.(?P<module>[A-Za-z0-9_]+)\.(?P<part>lora_A|lora_B|lora_embedding_A|"
                       r"lora_embedding_B|lora_magnitude_vector)(?:\.[A-Za-z0-9_]+)?\.weight$")
_THUDM_V2_PATH = re.compile(r"^base_model\.model\.transformer\.encoder\.layers\.(\d+)\.(self_attention|mlp)$")


def _load_mapped_lora(model, config, state: dict[str, torch.Tensor], source: Path, adapter_name: str):
    """XFL/THUDM LoRA on query_key_value (etc.) onto a model that splits those modules."""
    if not is_converted_chatglm(model) and model_type(model) != "glm":
        targets = config.target_modules
        raise ModelError(f"{source.parent / ADAPTER_CONFIG}: target_modules {list(targets)} do not exist in "
                         f"{type(model).__name__} (Linear modules: {', '.join(linear_module_names(model))}), and "
                         "no exact mapping is known for this model")
    if config.rank_pattern or config.alpha_pattern:
        raise ModelError(f"{source.parent / ADAPTER_CONFIG}: rank_pattern/alpha_pattern with THUDM module names "
                         "cannot be mapped; remove them or convert the adapter")
    if getattr(config, "use_dora", False):
        raise ModelError(f"{source.parent / ADAPTER_CONFIG}: a DoRA adapter on a fused query_key_value cannot be "
                         "split exactly (its norm is per fused row)")
    if config.bias != "none" or config.modules_to_save:
        raise ModelError(f"{source.parent / ADAPTER_CONFIG}: bias/modules_to_save on THUDM module names are not "
                         "supported for mapping")
    split = tuple(getattr(model.config, k) * model.config.head_dim
                  for k in ("num_attention_heads", "num_key_value_heads", "num_key_value_heads"))
    config.target_modules = resolve_target_modules(model, list(config.target_modules))
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        m = _LORA_KEY.match(key)
        pm = _THUDM_V2_PATH.match(m.group("path")) if m else None
        if m is None or pm is None or m.group("module") not in THUDM_TO_GLM:
            raise ModelError(f"{source}: adapter weight {key!r} is not a LoRA weight on a ChatGLM2/3 module")
        layer, part, module = pm.group(1), m.group("part"), m.group("module")
        block = "self_attn" if pm.group(2) == "self_attention" else "mlp"
        targets = THUDM_TO_GLM[module]
        if part not in ("lora_A", "lora_B"):
            raise ModelError(f"{source}: adapter weight {key!r}: only lora_A/lora_B can be mapped")
        if len(targets) == 1:
            pieces = [tensor]
        elif part == "lora_A":
            pieces = [tensor] * 3  # the same A feeds q, k and v
        else:
            if tensor.shape[0] != sum(split):
                raise ModelError(f"{source}: adapter weight {key!r} has {tensor.shape[0]} rows, the model's q/k/v "
                                 f"have {sum(split)} ({'+'.join(map(str, split))})")
            pieces = list(torch.split(tensor, list(split), dim=0))
        for target, piece in zip(targets, pieces, strict=True):
            mapped[f"base_model.model.model.layers.{layer}.{block}.{target}.{part}.weight"] = piece.clone()
    log.info("%s: LoRA on THUDM modules mapped onto %s (A shared, B split by rows)", source, config.target_modules)
    peft_model = _new_peft_model(model, config, adapter_name)
    _set_state(peft_model, mapped, source, adapter_name, config)
    return peft_model


# --- THUDM P-tuning v2 ------------------------------------------------------------------------------
def _load_ptuning(model, weights: Path, config_path: Path | None, adapter_name: str, is_trainable: bool):
    state = read_weight_file(weights)
    if PREFIX_KEY not in state:
        raise ModelError(f"{weights}: key {PREFIX_KEY!r} not found; not a THUDM P-tuning v2 checkpoint")
    extra = [k for k in state if not k.startswith("transformer.prefix_encoder.")]
    if extra:
        raise ModelError(f"{weights}: unexpected key {extra[0]!r} in a P-tuning checkpoint")
    if is_v1(model):
        v1 = v1_module()
        loader = getattr(v1, "load_v1_ptuning", None)
        if loader is None:
            raise ModelError(f"{weights}: P-tuning for ChatGLM-6B is not available in this build")
        return loader(model, state, source=str(weights), adapter_name=adapter_name, is_trainable=is_trainable)
    prefix = _materialise_prefix(state, weights)
    pre_seq_len = prefix.shape[0]
    if config_path is not None and config_path.is_file():
        declared = read_json_object(config_path).get("pre_seq_len")
        if declared not in (None, pre_seq_len):
            raise ModelError(f"{config_path}: pre_seq_len {declared} but {weights.name} holds {pre_seq_len} rows")
    from peft import PrefixTuningConfig, TaskType

    config = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=pre_seq_len,
                                prefix_projection=False, inference_mode=not is_trainable)
    peft_model = _new_peft_model(model, config, adapter_name)
    encoder = peft_model.prompt_encoder[adapter_name]
    want = tuple(encoder.embedding.weight.shape)
    if tuple(prefix.shape) != want:
        raise ModelError(f"{weights}: key {PREFIX_KEY!r} has shape {tuple(prefix.shape)}, the model needs {want} "
                         "(pre_seq_len x num_layers*2*kv_heads*head_dim)")
    with torch.no_grad():
        encoder.embedding.weight.copy_(prefix.to(encoder.embedding.weight.dtype))
    return peft_model


def _materialise_prefix(state: dict[str, torch.Tensor], source: Path) -> torch.Tensor:
    """The prefix rows; a projected checkpoint (prefix_encoder.trans.*) is run through its MLP once.

    THUDM's projection (Linear, tanh, Linear) has no counterpart of the same shape in peft, so the
    projected prefix (what THUDM's model feeds its layers) becomes a plain peft prefix: identical
    outputs; further training updates the prefix directly.
    """
    embedding = state[PREFIX_KEY].float()
    trans = {k.removeprefix("transformer.prefix_encoder.trans."): v.float() for k, v in state.items()
             if k.startswith("transformer.prefix_encoder.trans.")}
    if not trans:
        return embedding
    needed = ("0.weight", "0.bias", "2.weight", "2.bias")
    for name in needed:
        if name not in trans:
            raise ModelError(f"{source}: key 'transformer.prefix_encoder.trans.{name}' missing from a projected "
                             "P-tuning checkpoint")
    try:
        hidden = torch.tanh(embedding @ trans["0.weight"].T + trans["0.bias"])
        out = hidden @ trans["2.weight"].T + trans["2.bias"]
    except RuntimeError as err:
        raise ModelError(f"{source}: prefix_encoder.trans shapes do not chain ({err})") from None
    log.info("%s: projected P-tuning prefix materialised (%d x %d)", source, out.shape[0], out.shape[1])
    return out
