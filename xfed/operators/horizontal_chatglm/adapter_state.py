"""The adapter's trainable parameters as numpy (what is aggregated), loaded back in place, saved and resumed.

What is aggregated is what the optimizer trains: `named_parameters()` with `requires_grad`.
For LoRA that is every lora_A / lora_B; for P-tuning v2 with `prefix_projection` it is the
prefix embedding plus the MLP (`prompt_encoder[adapter]`), not the projected prefix that
`get_peft_model_state_dict` returns (averaging projections is not the projection of the average).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from peft import PeftConfig, PeftModel, PeftType
from safetensors.torch import load_file, save_file

from xfed.diskio import writing
from xfed.errors import JobError, ModelError

# Written beside a projected prefix adapter: the trainable embedding + MLP, needed to resume training
# (peft's own files hold only the projected, inference-form prefix).
PREFIX_TRAINABLE_FILE = "prefix_encoder_trainable.safetensors"


def trainable_names(peft_model: torch.nn.Module) -> list[str]:
    """The trainable parameter names in a fixed (sorted) order, identical on every party."""
    return sorted(name for name, p in peft_model.named_parameters() if p.requires_grad)


def extract_trainable(peft_model: torch.nn.Module) -> dict[str, np.ndarray]:
    """A float32 numpy copy of every trainable parameter, keyed by parameter name."""
    params = dict(peft_model.named_parameters())
    return {
        name: params[name].detach().to(device="cpu", dtype=torch.float32).numpy().copy()
        for name in trainable_names(peft_model)
    }


def load_trainable(peft_model: torch.nn.Module, tensors: dict[str, np.ndarray], source: str) -> None:
    """Copy `tensors` into the trainable parameters in place (the optimizer keeps its state).

    The names and shapes must match exactly; `source` names where the tensors came from.
    """
    params = dict(peft_model.named_parameters())
    expected = set(trainable_names(peft_model))
    missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or extra:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise JobError(f"{source}: adapter tensors do not match this model's trainable parameters: {detail}")
    with torch.no_grad():
        for name in sorted(expected):
            value = tensors[name]
            param = params[name]
            if tuple(value.shape) != tuple(param.shape):
                raise JobError(f"{source}: tensor {name} has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
            param.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(param.dtype))


def _is_projected_prefix(config: PeftConfig) -> bool:
    return config.peft_type == PeftType.PREFIX_TUNING and bool(getattr(config, "prefix_projection", False))


def save_adapter(peft_model: PeftModel, directory: Path) -> Path:
    """Save in PEFT's format (loadable by `PeftModel.from_pretrained`), plus the resume state of a projected prefix."""
    with writing(directory):  # a full disk names the folder, not a raw SafetensorError
        directory.mkdir(parents=True, exist_ok=True)
        peft_model.save_pretrained(str(directory), safe_serialization=True)
        config = peft_model.peft_config[peft_model.active_adapter]
        if _is_projected_prefix(config):
            encoder = peft_model.prompt_encoder[peft_model.active_adapter]
            state = {k: v.detach().to("cpu").contiguous() for k, v in encoder.state_dict().items()}
            save_file(state, str(directory / PREFIX_TRAINABLE_FILE))
    return directory


def _make_trainable(peft_model: PeftModel) -> None:
    """Adapters loaded for inference come frozen; training continues on exactly the adapter's own weights."""
    name = peft_model.active_adapter
    peft_model.peft_config[name].inference_mode = False
    for pname, param in peft_model.named_parameters():
        if f".{name}." in pname or pname.endswith(f".{name}"):
            param.requires_grad_(True)


def load_resumable_adapter(model: torch.nn.Module, path: Path, expected_kind: str) -> PeftModel:
    """A trainable PeftModel continuing from the adapter saved at `path` (input.adapter_model.path)."""
    config_file = path / "adapter_config.json"
    if not path.is_dir():
        raise ModelError(f"input.adapter_model.path: {path} is not a folder")
    if not config_file.is_file():
        return _load_foreign_adapter(model, path)  # e.g. a THUDM P-tuning checkpoint (pytorch_model.bin)
    try:
        config = PeftConfig.from_pretrained(str(path))
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{config_file}: not a valid peft adapter config ({exc})") from None
    kind = str(getattr(config.peft_type, "value", config.peft_type))
    if kind != expected_kind:
        raise ModelError(f"{config_file}: adapter is {kind} but train_params.peft configures {expected_kind}")
    if _is_projected_prefix(config):
        state_file = path / PREFIX_TRAINABLE_FILE
        if not state_file.is_file():
            raise ModelError(
                f"{path}: a projected prefix saved in inference form cannot be trained further; "
                f"{PREFIX_TRAINABLE_FILE} (written by xfed) is missing"
            )
        config.inference_mode = False
        from xfed.models import make_peft_model

        peft_model = make_peft_model(model, config)
        encoder = peft_model.prompt_encoder[peft_model.active_adapter]
        try:
            encoder.load_state_dict(load_file(str(state_file)))
        except (RuntimeError, OSError) as exc:
            raise ModelError(f"{state_file}: does not match the prefix encoder ({str(exc).splitlines()[0]})") from None
        return peft_model
    return _load_foreign_adapter(model, path)


def _load_foreign_adapter(model: torch.nn.Module, path: Path) -> PeftModel:
    """peft adapters (ours, or XFL's on THUDM module names) and THUDM P-tuning checkpoints, via the models layer."""
    from xfed.models import load_adapter

    peft_model = load_adapter(model, str(path), is_trainable=True)
    _make_trainable(peft_model)
    return peft_model
