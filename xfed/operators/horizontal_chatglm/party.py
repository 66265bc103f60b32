"""One party's local set-up: base model, tokenizer, adapter, data, Trainer, step count and fingerprints."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from xfed.errors import ConfigError, ModelError

from .adapter_state import trainable_names
from .config import Params
from .merge import LOCAL_DATASET_KEYS
from .peft_setup import apply_peft, check_trainable, peft_config_summary
from .preflight import digest, model_fingerprint, tokenizer_fingerprint

if TYPE_CHECKING:
    from xfed.config import Stage


def set_threads() -> None:
    """Training shares the machine with other parties in tests and demos: one thread unless told otherwise."""
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1)))


def load_base_model(stage: Stage, use_cpu: bool) -> tuple[Any, Any, Path]:
    """(model, tokenizer, folder) of the stage's input.pretrained_model (a local folder, never downloaded).

    dtype (`model_info.config.dtype` overrides): on CUDA bf16 where supported, else fp16; on CPU bf16 for
    a large model where the CPU has native bf16, else fp32 (xfed.models.memory). `quantization_bit` 4/8:
    THUDM int4/int8 (packed, any device); `load_in_4bit` / `load_in_8bit`: bitsandbytes QLoRA (CUDA only).
    The model's memory is estimated first and a model that cannot fit is refused in one line.
    """
    path = stage.input.pretrained_model.path if stage.input.pretrained_model is not None else None
    if not path:
        raise ConfigError("input.pretrained_model.path: required (a local model folder)")
    options = stage.model_info.config
    cuda = torch.cuda.is_available() and not use_cpu
    for key in ("load_in_8bit", "load_in_4bit"):
        if options.get(key) and not cuda:
            raise ConfigError(f"model_info.config.{key}: a 4/8-bit bitsandbytes base model needs a CUDA GPU "
                              "(bitsandbytes); this party trains on CPU: use quantization_bit 4 or 8 (THUDM int4/int8)")
    bits = options.get("quantization_bit") or None
    if bits is not None and (isinstance(bits, bool) or bits not in (4, 8)):
        raise ConfigError(f"model_info.config.quantization_bit: {bits!r} is not 4 or 8")
    folder = Path(path)
    if not folder.is_dir():
        raise ModelError(f"input.pretrained_model.path: {folder} is not a folder")
    dtype = options.get("dtype")
    if dtype is None and cuda:
        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if dtype is None:
        from xfed.models.memory import choose_cpu_dtype
        dtype = str(choose_cpu_dtype(folder, bits)).removeprefix("torch.")
    bnb = {k: v for k, v in options.items() if k.startswith(("load_in_", "bnb_4bit_"))}
    if not any(bnb.get(k) for k in ("load_in_4bit", "load_in_8bit")):
        from xfed.models.loading import resolve_dtype
        from xfed.models.memory import check_fits
        check_fits(folder, resolve_dtype(dtype), quantization_bit=bits, device="cuda" if cuda else None)
        bnb = {}
    model, tokenizer = load_model_folder(folder, device="cuda" if cuda else "cpu", dtype=dtype,
                                         allow_random_init=bool(options.get("allow_random_init", False)),
                                         quantization_bit=bits, bnb=bnb or None)
    return model, tokenizer, folder


def load_base_skeleton(stage: Stage) -> tuple[Any, Any, Path]:
    """(model on the meta device, tokenizer, folder): the layout of input.pretrained_model without its
    weights, for an assist trainer that only aggregates (xfed.models.skeleton)."""
    from xfed.models.skeleton import load_skeleton

    path = stage.input.pretrained_model.path if stage.input.pretrained_model is not None else None
    if not path:
        raise ConfigError("input.pretrained_model.path: required (a local model folder)")
    folder = Path(path)
    if not folder.is_dir():
        raise ModelError(f"input.pretrained_model.path: {folder} is not a folder")
    model, tokenizer = load_skeleton(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, folder


def aggregates_only(stage: Stage) -> bool:
    """An assist trainer with no trainset and no adapter to continue from needs no base model."""
    return not stage.input.trainset and adapter_path(stage) is None


def load_model_folder(folder: Path, *, device: str = "cpu", dtype: str | None = None,
                      allow_random_init: bool = False, quantization_bit: int | None = None,
                      bnb: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) through xfed.models.load_pretrained (every family; local files only)."""
    from xfed.models import load_pretrained

    if not folder.is_dir():
        raise ModelError(f"input.pretrained_model.path: {folder} is not a folder")
    model, tokenizer = load_pretrained(str(folder), dtype=dtype, device=device, allow_random_init=allow_random_init,
                                       quantization_bit=quantization_bit, bnb=bnb)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # generation and batching need a pad id
    return model, tokenizer


@dataclass
class PartyData:
    """What training and evaluation need from the party's private files."""

    train: Any
    num_examples: int
    collator: Any
    val_features: list[dict[str, Any]] = field(default_factory=list)
    val_prompts: list[list[int]] = field(default_factory=list)
    val_answers: list[str] = field(default_factory=list)


def load_party_data(stage: Stage, params: Params, tokenizer: Any, model: Any) -> PartyData | None:
    """The party's trainset (None when it has none: an aggregating assist trainer) and optional valset."""
    from . import collate, data

    dataset_params = params.data
    trainset = list(stage.input.trainset)
    if not trainset:
        return None
    train_records = data.read_records(trainset, dataset_params)
    if not train_records:
        raise ConfigError(f"input.trainset: {trainset[0].path}: no training examples")
    train = data.build_features(train_records, tokenizer, dataset_params, model=model)
    collator = collate.make_collator(tokenizer, dataset_params)
    out = PartyData(train=train, num_examples=len(train), collator=collator)
    valset = list(stage.input.valset)
    if valset:
        val_records = data.read_records(valset, dataset_params)
        out.val_features = list(data.build_features(val_records, tokenizer, dataset_params, model=model))
        pairs = data.build_prompts(val_records, tokenizer, dataset_params, model=model)
        out.val_prompts = [p for p, _ in pairs]
        out.val_answers = [a for _, a in pairs]
    return out


def fingerprints(model_dir: Path, tokenizer: Any, peft_model: Any, params: Params) -> dict[str, Any]:
    """The four digests every party must share (see preflight.FINGERPRINT_KEYS)."""
    params_peft = dict(peft_model.named_parameters())
    shapes = {name: list(params_peft[name].shape) for name in trainable_names(peft_model)}
    config = peft_config_summary(peft_model.peft_config[peft_model.active_adapter])
    base = model_fingerprint(model_dir, tokenizer)
    return {
        "base_model": digest(base),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "peft": digest({"config": config, "trainable": shapes}),
        "schedule": digest({
            "agg_steps": params.agg.agg_steps, "weighting": params.agg.weighting,
            "encryption": params.encryption_dict(),
            "dataset": params.data.model_dump(exclude_none=True, exclude=set(LOCAL_DATASET_KEYS)),
        }),
        "base_model_parts": base,  # which files differ, for the diff table
    }


def adapter_path(stage: Stage) -> Path | None:
    """input.adapter_model.path (an adapter to continue training from), or None."""
    path = stage.input.adapter_model.path if stage.input.adapter_model is not None else None
    return Path(path) if path else None


def build_adapter(model: Any, params: Params, resume: Path | None, seed: int) -> Any:
    """A fresh adapter (seeded; the assist trainer's initial adapter then replaces it) or a resumed one."""
    from transformers import set_seed

    set_seed(seed)
    assert params.peft is not None  # a complete Params has its peft section
    peft_model = apply_peft(model, params.peft, resume)
    check_trainable(peft_model, "train_params.peft")
    return peft_model
