"""A label trainer's effective train_params: the assist trainer's, plus the party's own local keys."""
from __future__ import annotations

import json
from typing import Any

from .config import DatasetParams, Params
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


def merge_authoritative(assist: Params, party: Params) -> tuple[Params, list[str]]:
    """A label trainer's effective train_params: the assist trainer's, plus the party's local keys.

    Both are validated models (the party's partial: only what it set counts). `aggregation`,
    `encryption` and `peft` are the assist trainer's outright; in `trainer` and `dataset` a party keeps
    its own hardware/bookkeeping keys (LOCAL_TRAINER_KEYS, LOCAL_DATASET_KEYS). Returns (merged,
    conflicts) where each conflict reads "trainer.learning_rate: assist=0.001 party=0.01" for a key
    both set differently ("assist=(unset)": the assist trainer's default applies).
    """
    mine_all = party.model_dump(mode="json", exclude_unset=True)
    theirs_all = assist.model_dump(mode="json", exclude_unset=True)
    conflicts: list[str] = []

    def note(key: str, mine: Any, theirs: Any) -> None:
        if mine is not None and _canonical(mine) != _canonical(theirs):
            shown = "(unset)" if theirs is None else _canonical(theirs)
            conflicts.append(f"{key}: assist={shown} party={_canonical(mine)}")

    for section in SHARED_SECTIONS:
        if mine_all.get(section) is not None:
            for key, mine, theirs in _leaf_diff(section, mine_all[section], theirs_all.get(section)):
                note(key, mine, theirs)
    update: dict[str, Any] = {}
    if assist.trainer is not None or party.trainer:
        trainer = {k: v for k, v in trainer_kwargs(assist.trainer).items() if k not in PARTY_ONLY_TRAINER_KEYS}
        for key, mine in trainer_kwargs(party.trainer).items():
            if key in LOCAL_TRAINER_KEYS or key in FORCED_TRAINER_ARGS:  # no conflict to report
                trainer[key] = mine
            else:
                note(f"trainer.{key}", mine, trainer.get(key))
        update["trainer"] = trainer
    if assist.dataset is not None or party.dataset is not None:
        theirs = theirs_all.get("dataset") or {}
        local: dict[str, Any] = {}
        for key, mine in (mine_all.get("dataset") or {}).items():
            if key in LOCAL_DATASET_KEYS:
                local[key] = getattr(party.dataset, key)
            else:
                note(f"dataset.{key}", mine, theirs.get(key))
        update["dataset"] = (assist.dataset or DatasetParams()).model_copy(update=local)
    return assist.model_copy(update=update), conflicts


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _leaf_diff(prefix: str, mine: Any, theirs: Any):
    if isinstance(mine, dict) and isinstance(theirs, dict):
        for key in sorted(mine):
            yield from _leaf_diff(f"{prefix}.{key}", mine[key], theirs.get(key))
    elif _canonical(mine) != _canonical(theirs):
        yield prefix, mine, theirs
