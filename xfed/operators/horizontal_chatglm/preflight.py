"""Preflight: the fingerprints every party must share before any training, compared with a diff table.

Before any training every party reports digests of its base model (config + weight files),
tokenizer (vocabulary + special tokens), effective peft config and schedule inputs; the
assist trainer compares them and fails the job with a per-party diff table naming who differs.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from xfed.errors import PreflightError

FINGERPRINT_KEYS = ("base_model", "tokenizer", "peft", "schedule")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def digest(value: Any) -> str:
    """A short sha256 digest of a JSON-able value (canonical: sorted keys)."""
    return hashlib.sha256(_canonical(value).encode()).hexdigest()[:16]


def conflict_warnings(node: str, conflicts: list[str]) -> list[str]:
    """One line per key where a party's config disagrees with the assist trainer's (whose value is used)."""
    return [f"{node}: train_params.{c} (the assist trainer's value is used)" for c in conflicts]


def file_digest(path: Path, chunk: int = 1 << 23) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".model")


def model_fingerprint(model_dir: Path, model: Any = None) -> str:
    """Digest of the base model: its config (architecture fields) and the contents of its weight files."""
    try:
        from xfed.models import fingerprint as models_fingerprint
    except ImportError:
        models_fingerprint = None
    if models_fingerprint is not None:
        return str(models_fingerprint(model_dir))
    config_file = model_dir / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    for volatile in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache"):
        config.pop(volatile, None)
    weights = {
        p.name: file_digest(p) for p in sorted(model_dir.iterdir()) if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES)
    }
    return digest({"config": config, "weights": weights})


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Digest of the vocabulary and special tokens (two tokenizers that agree here give the same ids)."""
    vocab = sorted(tokenizer.get_vocab().items())
    specials = {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())}
    return digest({"vocab": vocab, "specials": specials, "class": type(tokenizer).__name__})


def compare_fingerprints(reference_node: str, by_node: dict[str, dict[str, str]]) -> None:
    """Raise PreflightError with a per-party diff table if any party differs from `reference_node`."""
    ref = by_node[reference_node]
    differs = {
        node: [k for k in FINGERPRINT_KEYS if fp.get(k) != ref.get(k)] for node, fp in sorted(by_node.items())
    }
    bad = {node: keys for node, keys in differs.items() if keys}
    if not bad:
        return
    summary = "; ".join(
        f"{node} differs from {reference_node} in "
        + ", ".join(f"{k} ({by_node[node].get(k, '-')} != {ref.get(k, '-')})" for k in keys)
        for node, keys in bad.items()
    )
    err = PreflightError(f"preflight failed: {summary}")
    err.table = diff_table(reference_node, by_node)  # multi-line, for the job log and the console
    raise err


def diff_table(reference_node: str, by_node: dict[str, dict[str, str]]) -> str:
    """A plain-text table: one row per party, one column per fingerprint, '≠' where it differs."""
    ref = by_node[reference_node]
    header = ["party", *FINGERPRINT_KEYS]
    rows = [header]
    for node, fp in sorted(by_node.items(), key=lambda item: (item[0] != reference_node, item[0])):
        cells = [node]
        for key in FINGERPRINT_KEYS:
            mark = "" if fp.get(key) == ref.get(key) else " ≠"
            cells.append(f"{fp.get(key, '-')}{mark}")
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
