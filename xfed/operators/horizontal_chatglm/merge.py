"""A label trainer's effective train_params: the assist trainer's, plus the party's own local keys."""
from __future__ import annotations

import copy
import json
from typing import Any

from .training_args import FORCED_TRAINER_ARGS, trainer_kwargs

# Trainer keys that describe a party's own hardware and bookkeeping: each party keeps its own
# (XFL's demos give label trainers their own batch size and no_cuda). Every other key is shared
# and the assist trainer's value wins.
LOCAL_TRAINER_KEYS = frozenset({
    "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
    "no_cuda", "use_cpu", "torch_compile", "save_strategy", "save_steps", "save_total_limit",
    "logging_steps", "logging_strategy", "dataloader_num_workers", "dataloader_pin_memory",
    "fp16", "bf16", "gradient_checkpointing", "disable_tqdm", "log_level", "report_to", "run_name",
})
# A party's reporting is its own choice: the assist trainer's value is not handed on (a party that did
# not ask must not start sending its losses to W&B or MLflow because the aggregator does).
PARTY_ONLY_TRAINER_KEYS = frozenset({"report_to", "run_name"})
# Dataset keys naming a party's own columns (its files may be laid out differently).
LOCAL_DATASET_KEYS = frozenset({"key_query", "key_answer", "prompt_column", "response_column", "history_column",
                                "metrics"})
SHARED_SECTIONS = ("aggregation", "encryption", "peft")


def merge_authoritative(assist: dict[str, Any], party: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A label trainer's effective train_params: the assist trainer's, plus the party's local keys.

    `aggregation`, `encryption` and `peft` are the assist trainer's outright; in `trainer` and
    `dataset` a party keeps its own hardware/bookkeeping keys (LOCAL_TRAINER_KEYS,
    LOCAL_DATASET_KEYS). Returns (merged, conflicts) where each conflict reads
    "trainer.learning_rate: assist=0.001 party=0.01" for a key both set differently.
    """
    assist = _normalised(assist)
    party = _normalised(party)
    merged = copy.deepcopy(assist)
    conflicts: list[str] = []

    def note(key: str, mine: Any, theirs: Any) -> None:
        if mine is not None and _canonical(mine) != _canonical(theirs):
            shown = "(unset)" if theirs is None else _canonical(theirs)
            conflicts.append(f"{key}: assist={shown} party={_canonical(mine)}")

    for section in SHARED_SECTIONS:
        if party.get(section) is not None:
            for key, mine, theirs in _leaf_diff(section, party[section], assist.get(section)):
                note(key, mine, theirs)
    for section, local in (("trainer", LOCAL_TRAINER_KEYS), ("dataset", LOCAL_DATASET_KEYS)):
        if assist.get(section) is None and not party.get(section):
            continue
        combined = dict(assist.get(section) or {})
        if section == "trainer":
            combined = {k: v for k, v in combined.items() if k not in PARTY_ONLY_TRAINER_KEYS}
        for key, mine in (party.get(section) or {}).items():
            if key in local or (section == "trainer" and key in FORCED_TRAINER_ARGS):  # no conflict to report
                combined[key] = mine
            else:
                note(f"{section}.{key}", mine, combined.get(key))
        merged[section] = combined
    for key, mine in party.items():
        if key not in (*SHARED_SECTIONS, "trainer", "dataset"):
            note(key, mine, assist.get(key))
    return merged, conflicts


def _normalised(params: dict[str, Any]) -> dict[str, Any]:
    params = dict(params or {})
    trainer = params.get("trainer")
    if isinstance(trainer, dict) and "no_cuda" in trainer and "use_cpu" not in trainer:
        params["trainer"] = trainer_kwargs(trainer)
    return params


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _leaf_diff(prefix: str, mine: Any, theirs: Any):
    if isinstance(mine, dict) and isinstance(theirs, dict):
        for key in sorted(mine):
            yield from _leaf_diff(f"{prefix}.{key}", mine[key], theirs.get(key))
    elif _canonical(mine) != _canonical(theirs):
        yield prefix, mine, theirs
