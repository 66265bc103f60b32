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


def model_fingerprint(model_dir: Path, tokenizer: Any = None) -> dict[str, Any]:
    """Digests of the base model folder: family, config (paths etc. ignored) and weight files.

    Weight files are sampled (size + first/middle/last MiB) so a 12 GB checkpoint costs no minutes on
    every start; this is a consistency check between honest parties, not an integrity proof.
    """
    from xfed.models import model_fingerprint as models_fingerprint

    full = models_fingerprint(model_dir, quick=True, tokenizer=tokenizer)
    return {k: full[k] for k in ("family", "config", "weights", "weights_mode")}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Digest of the vocabulary and special tokens (two tokenizers that agree here give the same ids)."""
    from xfed.models import tokenizer_digest

    return tokenizer_digest(tokenizer)[:16]


def _base_model_parts(mine: dict[str, Any], ref: dict[str, Any]) -> str:
    """Which parts of two base-model fingerprints differ, e.g. 'weights:model.safetensors'."""
    from xfed.models import fingerprint_mismatches

    parts = fingerprint_mismatches(mine.get("base_model_parts") or {}, ref.get("base_model_parts") or {})
    return f": {', '.join(parts)}" if parts else ""


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
        + ", ".join(
            f"{k} ({by_node[node].get(k, '-')} != {ref.get(k, '-')}"
            + (_base_model_parts(by_node[node], ref) if k == "base_model" else "") + ")"
            for k in keys
        )
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
