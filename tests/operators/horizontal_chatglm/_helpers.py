"""Tokenized examples and their collator, shared by the tests that drive the real HF Trainer."""
from __future__ import annotations

import numpy as np
import torch


def features(n: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """n examples of a 4-token prompt and a 3-token answer + <eos> (id 1); the loss covers the answer."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt = rng.integers(3, 30, size=4).tolist()
        answer = rng.integers(3, 30, size=3).tolist() + [1]
        out.append({"input_ids": prompt + answer, "labels": [-100] * 4 + answer})
    return out


def collate(batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: pad id 0, label -100, attention mask 0."""
    width = max(len(f["input_ids"]) for f in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, f in enumerate(batch):
        n = len(f["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(f["input_ids"]), torch.tensor(f["labels"]), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
