"""Batches for the Trainer: right-padded ids and labels with an attention mask."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .data import IGNORE_INDEX, DatasetSection, dataset_settings, eos_id


class PadCollator:
    """Right-pads `input_ids` with the pad id and `labels` with -100; adds `attention_mask` (torch tensors)."""

    def __init__(self, pad_token_id: int, label_pad_id: int = IGNORE_INDEX, pad_to_multiple_of: int | None = None):
        self.pad_token_id = int(pad_token_id)
        self.label_pad_id = int(label_pad_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Iterable[Mapping[str, Sequence[int]]]) -> dict[str, Any]:
        import torch

        features = list(features)
        width = max((len(f["input_ids"]) for f in features), default=0)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), self.label_pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.tensor(list(f["input_ids"]), dtype=torch.long)
            labels[row, :n] = torch.tensor(list(f["labels"]), dtype=torch.long)
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def make_collator(tokenizer: Any, dataset_params: DatasetSection = None,
                  pad_to_multiple_of: int | None = None) -> PadCollator:
    """The training collator for `tokenizer` (pad id, else eos id); padding labels -100 unless
    `ignore_pad_token_for_loss` is false (then the pad id, as ChatGLM's p-tuning does)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = eos_id(tokenizer)
    opts = dataset_settings(dataset_params)
    label_pad = IGNORE_INDEX if opts.ignore_pad_token_for_loss else pad
    return PadCollator(pad, label_pad, pad_to_multiple_of)
