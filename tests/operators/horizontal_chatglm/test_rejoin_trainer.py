"""rejoin_trainer.prepare_rejoin with a real HF Trainer: a rejoiner trains only the steps after its admission round,
with the learning rate an uninterrupted party has at those steps."""
from __future__ import annotations

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from xfed.operators.horizontal_chatglm.rejoin_trainer import prepare_rejoin
from xfed.operators.horizontal_chatglm.schedule import party_schedule


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Linear(2, 1)

    def forward(self, x, y):
        return {"loss": torch.nn.functional.mse_loss(self.w(x).squeeze(-1), y)}


class _Record(TrainerCallback):
    def __init__(self) -> None:
        self.steps: list[tuple[int, float]] = []

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.steps.append((state.global_step + 1, optimizer.param_groups[0]["lr"]))


def _trainer(tmp_path, name: str) -> tuple[Trainer, _Record]:
    torch.manual_seed(0)
    data = [{"x": torch.randn(2), "y": torch.randn(())} for _ in range(8)]
    args = TrainingArguments(output_dir=str(tmp_path / name), per_device_train_batch_size=2, num_train_epochs=2,
                             learning_rate=0.1, lr_scheduler_type="linear", use_cpu=True, report_to="none",
                             save_strategy="no", seed=3, disable_tqdm=True)
    record = _Record()
    trainer = Trainer(model=_Tiny(), args=args, train_dataset=data, callbacks=[record],
                      data_collator=lambda rows: {k: torch.stack([r[k] for r in rows]) for k in rows[0]})
    return trainer, record


def test_a_rejoiner_takes_the_steps_after_its_admission_round_at_the_uninterrupted_learning_rates(tmp_path):
    full, full_steps = _trainer(tmp_path, "full")
    full.train()
    assert [s for s, _ in full_steps.steps] == list(range(1, 9))
    rejoiner, steps = _trainer(tmp_path, "rejoin")
    schedule = party_schedule(4, 8)  # rounds end at steps 2, 4, 6, 8
    checkpoint = prepare_rejoin(rejoiner, tmp_path / "rejoin-state", schedule, 2)  # admitted after round 2
    rejoiner.train(resume_from_checkpoint=checkpoint)
    assert [s for s, _ in steps.steps] == [5, 6, 7, 8]  # rounds 3 and 4 only
    assert rejoiner.state.global_step == 8
    for (step, lr), (full_step, full_lr) in zip(steps.steps, full_steps.steps[4:], strict=True):
        assert step == full_step and abs(lr - full_lr) < 1e-12, (step, lr, full_lr)
    assert steps.steps[0][1] < 0.1 * 0.6  # not restarted at the peak learning rate
