"""Digests that tell whether two parties hold the same base model and tokenizer (operator preflight).

Computed locally; only the hex digests are ever compared across parties. The config digest
ignores keys that differ between byte-identical models (paths, the transformers version that
saved it, auto_map); weight digests are of the files as stored.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from xfed.errors import ModelError
from xfed.models.checkpoint import weight_files
from xfed.models.family import detect_family, read_config

_VOLATILE_KEYS = {"_name_or_path", "transformers_version", "auto_map", "architectures", "torch_dtype", "dtype",
                  "use_cache", "_commit_hash", "name_or_path"}
_TOKENIZER_FILES = ("tokenizer.model", "ice_text.model", "tokenizer.json", "vocab.json", "merges.txt",
                    "vocab.txt", "sentencepiece.bpe.model", "spiece.model")
_CHUNK = 1 << 20


def config_digest(config: dict[str, Any]) -> str:
    """sha256 of the config's canonical JSON without volatile keys."""
    stable = {k: v for k, v in config.items() if k not in _VOLATILE_KEYS}
    blob = json.dumps(stable, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()


def file_digest(path: str | Path, *, quick: bool = False) -> str:
    """sha256 of a file; quick: size + first, middle and last MiB (for multi-GB weights on every start)."""
    path = Path(path)
    h = hashlib.sha256()
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            if quick and size > 3 * _CHUNK:
                h.update(f"quick:{size}:".encode())
                for offset in (0, size // 2, size - _CHUNK):
                    fh.seek(offset)
                    h.update(fh.read(_CHUNK))
            else:
                for block in iter(lambda: fh.read(8 * _CHUNK), b""):
                    h.update(block)
    except OSError as err:
        raise ModelError(f"{path}: cannot read ({err.strerror or err})") from None
    return h.hexdigest()


def tokenizer_digest(tokenizer: Any) -> str:
    """sha256 of a loaded tokenizer's vocabulary (token -> id) and its special tokens."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    special = {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())}
    blob = json.dumps({"vocab": vocab, "special": special}, ensure_ascii=False, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def tokenizer_files_digest(folder: str | Path) -> str:
    """sha256 over the folder's tokenizer model/vocab files (name + content)."""
    folder = Path(folder)
    h = hashlib.sha256()
    found = False
    for name in _TOKENIZER_FILES:
        if (folder / name).is_file():
            found = True
            h.update(name.encode() + b"\0" + bytes.fromhex(file_digest(folder / name)))
    if not found:
        raise ModelError(f"{folder}: no tokenizer file ({', '.join(_TOKENIZER_FILES)})")
    return h.hexdigest()


def model_fingerprint(path: str | Path, *, quick: bool = False, tokenizer: Any = None) -> dict[str, Any]:
    """{'family', 'config', 'weights': {file: sha256}, 'tokenizer'} for a model folder.

    Pass the loaded `tokenizer` to digest its vocabulary; otherwise its files are digested.
    """
    folder = Path(path)
    family = detect_family(folder)
    config = read_config(folder)
    weights = {p.name: file_digest(p, quick=quick) for p in weight_files(folder) if not p.name.endswith(".json")}
    return {
        "family": family,
        "config": config_digest(config),
        "weights": weights,
        "weights_mode": "quick" if quick else "sha256",
        "tokenizer": tokenizer_digest(tokenizer) if tokenizer is not None else tokenizer_files_digest(folder),
        "tokenizer_mode": "vocab" if tokenizer is not None else "files",
    }


def fingerprint_mismatches(mine: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """Names of the fingerprint parts that differ ('config', 'weights:FILE', 'tokenizer', …)."""
    diffs = [k for k in ("family", "config") if mine.get(k) != theirs.get(k)]
    if mine.get("weights_mode") == theirs.get("weights_mode"):
        a, b = mine.get("weights", {}), theirs.get("weights", {})
        diffs += [f"weights:{name}" for name in sorted(set(a) | set(b)) if a.get(name) != b.get(name)]
    if mine.get("tokenizer_mode") == theirs.get("tokenizer_mode") and mine.get("tokenizer") != theirs.get("tokenizer"):
        diffs.append("tokenizer")
    return diffs
