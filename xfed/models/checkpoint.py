"""Read a model folder's weights (.bin via weights_only torch.load, shards + index, safetensors)."""
from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from xfed.errors import ModelError

# Most specific first: a folder may hold both an index and the single file of an older save.
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class Checkpoint:
    """Tensors by key, the file each key came from, and a label naming the whole checkpoint."""

    tensors: dict[str, torch.Tensor]
    key_files: dict[str, str] = field(default_factory=dict)
    label: str = ""


def weight_files(folder: str | Path) -> list[Path]:
    """The weight files load_checkpoint would read (empty when the folder holds none)."""
    folder = Path(folder)
    for name in INDEX_FILES:
        index = folder / name
        if index.is_file():
            return [index] + [folder / f for f in sorted(set(_read_index(index).values()))]
    for name in SINGLE_FILES:
        if (folder / name).is_file():
            return [folder / name]
    return []


def has_weights(folder: str | Path) -> bool:
    return bool(weight_files(folder))


def _read_index(index: Path) -> dict[str, str]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        weight_map = data["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ModelError(f"{index}: not a valid shard index ({type(err).__name__}: {err})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ModelError(f"{index}: key 'weight_map' must map weight names to file names")
    for name in weight_map.values():
        if "/" in name or "\\" in name or name.startswith("."):
            raise ModelError(f"{index}: shard file name {name!r} must be a plain file in the folder")
    return weight_map


def read_weight_file(path: str | Path) -> dict[str, torch.Tensor]:
    """One .bin (weights_only) or .safetensors file; a corrupt file is a ModelError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: weight file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise ModelError(f"{path}: corrupt safetensors file ({_one_line(err)})") from None
    try:
        try:
            # mmap: a 12 GB fp16 checkpoint is paged in while it is cast, not held twice
            data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err) and "zipfile" not in str(err):
                raise
            data = torch.load(str(path), map_location="cpu", weights_only=True)  # legacy (pre-zip) format
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError,
            AttributeError, ImportError, KeyError, TypeError) as err:
        raise ModelError(f"{path}: corrupt or unsafe .bin file (torch.load weights_only refused it: "
                         f"{_one_line(err)})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                             for k, v in data.items()):
        raise ModelError(f"{path}: expected a dict of named tensors")
    return data


def load_checkpoint(folder: str | Path, transform=None) -> Checkpoint:
    """Every tensor of a model folder; ModelError when there is none or a shard disagrees with its index.

    `transform(tensors)` edits each file's tensors in place as soon as it is read (quantizing or
    casting shard by shard keeps peak memory near the loaded model's size, not the checkpoint's)."""
    folder = Path(folder)
    for name in INDEX_FILES:
        index = folder / name
        if not index.is_file():
            continue
        weight_map = _read_index(index)
        tensors: dict[str, torch.Tensor] = {}
        key_files: dict[str, str] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = folder / shard
            if not shard_path.is_file():
                key = next(k for k, v in weight_map.items() if v == shard)
                raise ModelError(f"{index}: shard {shard} (holding {key!r}) not found in {folder}")
            part = read_weight_file(shard_path)
            if transform is not None:
                transform(part)
            for key, tensor in part.items():
                if key in tensors:
                    raise ModelError(f"{shard_path}: weight {key!r} also appears in {key_files[key]}")
                if weight_map.get(key) != shard and not key.endswith("_scale"):
                    raise ModelError(f"{shard_path}: weight {key!r} is not listed for this shard in {index.name}")
                tensors[key] = tensor
                key_files[key] = str(shard_path)
        for key, shard in weight_map.items():
            if key not in tensors:  # (a transform adds keys, never drops listed ones)
                raise ModelError(f"{folder / shard}: weight {key!r} listed in {index.name} is missing")
        return Checkpoint(tensors, key_files, str(index))
    for name in SINGLE_FILES:
        path = folder / name
        if path.is_file():
            tensors = read_weight_file(path)
            if transform is not None:
                transform(tensors)
            return Checkpoint(tensors, dict.fromkeys(tensors, str(path)), str(path))
    raise ModelError(f"{folder}: no weights (expected one of {', '.join(SINGLE_FILES + INDEX_FILES)})")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:200] + ("…" if len(text) > 200 else "")


_CAST_CHUNK = 1 << 24  # elements converted at a time by cast_in_place


def cast_in_place(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`tensor.to(dtype)`, reusing the tensor's own memory when both dtypes have the same width (fp16 <->
    bf16) and it owns its whole storage: converted chunk by chunk, so a 1 GB embedding cast to bf16 costs
    16 M elements of extra memory, not another 1 GB. The input must not be used afterwards."""
    if tensor.dtype == dtype:
        return tensor
    if (tensor.element_size() != torch.empty(0, dtype=dtype).element_size() or not tensor.is_contiguous()
            or not tensor.is_floating_point() or tensor.device.type != "cpu" or tensor.storage_offset() != 0
            or tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size()):
        return tensor.to(dtype)
    flat = tensor.view(-1)
    out = flat.view(dtype)
    for start in range(0, flat.numel(), _CAST_CHUNK):
        chunk = flat[start:start + _CAST_CHUNK].to(dtype)  # read before the same bytes are overwritten
        out[start:start + _CAST_CHUNK] = chunk
    return out.view(tensor.shape)
