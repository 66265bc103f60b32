"""Preflight: the assist trainer's authoritative train_params, and fingerprints every party must share.

Before any training every party reports digests of its base model (config + weight files),
tokenizer (vocabulary + special tokens), effective peft config and schedule inputs; the
assist trainer compares them and fails the job with a per-party diff table naming who differs.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from xfed.errors import PreflightError

FINGERPRINT_KEYS = ("base_model", "tokenizer", "peft", "schedule")

# Trainer keys that describe a party's own hardware and bookkeeping: each party keeps its own
# (XFL's demos give label trainers their own batch size and no_cuda).  Every other trainer key
# is shared and the assist trainer's value wins.
LOCAL_TRAINER_KEYS = frozenset({
    "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
    "no_cuda", "use_cpu", "torch_compile", "save_strategy", "save_steps", "save_total_limit",
    "logging_steps", "logging_strategy", "dataloader_num_workers", "dataloader_pin_memory",
    "fp16", "bf16", "gradient_checkpointing", "output_dir", "disable_tqdm", "log_level",
})
# Dataset keys that name a party's own columns (its files may be laid out differently).
LOCAL_DATASET_KEYS = frozenset({"key_query", "key_answer", "prompt_column", "response_column", "history_column"})
# Sections the assist trainer decides outright.
SHARED_SECTIONS = ("aggregation", "encryption", "peft")
ONE_OF_SECTIONS = ("encryption", "peft")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def digest(value: Any) -> str:
    """A short sha256 digest of a JSON-able value (canonical: sorted keys)."""
    return hashlib.sha256(_canonical(value).encode()).hexdigest()[:16]


def authoritative_params(assist: dict[str, Any], party: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The train_params a party runs with, and its conflicts with the assist trainer key by key.

    Returns (effective params, [{"key": "trainer.learning_rate", "party": 0.01, "assist": 0.001}, …]).
    """
    effective = copy.deepcopy(assist)
    conflicts: list[dict[str, Any]] = []

    def note(key: str, mine: Any, theirs: Any) -> None:
        if mine is not None and _canonical(mine) != _canonical(theirs):
            conflicts.append({"key": key, "party": mine, "assist": theirs})

    for section in SHARED_SECTIONS:
        mine, theirs = party.get(section), assist.get(section)
        if mine is None:
            continue
        if section in ONE_OF_SECTIONS and isinstance(mine, dict) and isinstance(theirs, dict) and set(mine) != set(theirs):
            note(section, mine, theirs)  # otp vs plain, LORA vs PREFIX_TUNING: one conflict, not one per leaf
            continue
        for key, leaf_mine, leaf_theirs in _leaf_diff(section, mine, theirs):
            note(key, leaf_mine, leaf_theirs)
    for section, local_keys in (("trainer", LOCAL_TRAINER_KEYS), ("dataset", LOCAL_DATASET_KEYS)):
        merged = dict(assist.get(section) or {})
        for key, mine in (party.get(section) or {}).items():
            if key in local_keys:
                merged[key] = mine
            else:
                note(f"{section}.{key}", mine, merged.get(key))
        effective[section] = merged
    for key, mine in party.items():
        if key not in (*SHARED_SECTIONS, "trainer", "dataset"):
            note(key, mine, assist.get(key))
    return effective, conflicts


def _leaf_diff(prefix: str, mine: Any, theirs: Any):
    """(dotted key, party value, assist value) for every leaf where the party's section differs."""
    if isinstance(mine, dict) and isinstance(theirs, dict):
        for key in sorted(set(mine) | set(theirs)):
            if key in mine:
                yield from _leaf_diff(f"{prefix}.{key}", mine[key], theirs.get(key))
    elif _canonical(mine) != _canonical(theirs):
        yield prefix, mine, theirs


def format_conflicts(node: str, conflicts: list[dict[str, Any]]) -> list[str]:
    return [
        f"{node}: train_params.{c['key']} = {_canonical(c['party'])} differs from the assist trainer's "
        f"{_canonical(c['assist'])}; using the assist trainer's value"
        for c in conflicts
    ]


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
