"""A restarted label trainer's Trainer, resumed at the optimizer step of its admission (docs/SECAGG.md §7).

The rejoiner runs the Hugging Face Trainer over the whole schedule (the same `total_steps`, so the
same aggregation points) but resumes it at the optimizer step that ended the round before its first
one, from a Trainer state holding only that step (`trainer_state.json`): the Trainer skips the
batches of the missed rounds (the sampler is seeded by `trainer.seed`, as in any resume), starts
fresh optimizer moments (the dead process's are lost, and they belonged to an older model), and
`AdvanceSchedule` puts the learning-rate schedule at that step, where an uninterrupted party's
schedule would be.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .resume import _keep_loaded_weights
from .schedule import Schedule


def rejoin_checkpoint(folder: Path, trainer: Any, total_steps: int, global_step: int) -> str:
    """A folder for `resume_from_checkpoint` holding only a Trainer state at `global_step` (no optimizer,
    scheduler or RNG files: the Trainer keeps its fresh ones)."""
    from transformers.trainer_callback import TrainerState

    folder.mkdir(parents=True, exist_ok=True)
    state = TrainerState()
    state.train_batch_size = trainer._train_batch_size
    state.compute_steps(trainer.args, total_steps)
    state.max_steps, state.global_step = int(total_steps), int(global_step)
    state.save_to_json(str(folder / "trainer_state.json"))
    return str(folder)


class AdvanceSchedule(TrainerCallback):
    """Puts the learning-rate schedule at `step` when training begins (a resume without scheduler state)."""

    def __init__(self, step: int) -> None:
        self.step = int(step)

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        if lr_scheduler is None or self.step <= 0 or not hasattr(lr_scheduler, "last_epoch"):
            return control
        lr_scheduler.last_epoch = self.step - 1
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
            warnings.simplefilter("ignore")
            lr_scheduler.step()
        return control


def prepare_rejoin(trainer: Any, folder: Path, schedule: Schedule, start: int) -> str:
    """Set the Trainer up to train rounds start + 1 .. last only; returns its `resume_from_checkpoint`."""
    step = int(schedule.steps[start - 1])  # the optimizer step that ended round `start`
    trainer._load_from_checkpoint = _keep_loaded_weights  # the welcome's global adapter is already loaded
    trainer.add_callback(AdvanceSchedule(step))
    return rejoin_checkpoint(folder, trainer, schedule.total_steps, step)
