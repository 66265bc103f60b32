"""Resuming a horizontal_chatglm stage from its last completed aggregation round (`start --resume JOB`).

Every round's `checkpoint-{k}/` gets an `xfed_resume/` folder beside the PEFT adapter: the trainable
tensors exactly as aggregated (parameter names, float32), the Hugging Face Trainer's optimizer,
LR-scheduler, RNG and trainer state (so a resumed run takes the very same steps an uninterrupted
one would: same moments, same LR, same batches, same dropout draws), and `state.json`, written
last, which marks the round complete. A new attempt (ctx.attempt > 0) asks every party for its
last complete round; the assist trainer picks the lowest, everyone loads that checkpoint, and
training continues with round k + 1. Pads are not touched here: the attempt number is part of
the DH session, so a resumed attempt derives fresh pad streams.

Only the last two rounds' resume states are kept (`prune`): a party saves round k's state before it
contributes to round k + 1, so no party can be more than one round behind another and the agreed
round is always one of the two newest. The PEFT adapters of every checkpoint stay, unless the
trainer's `save_total_limit` asks for fewer.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from xfed.errors import JobError
from xfed.operators.context import OperatorContext

from ..outputs import describe, job_identity, same_job
from .growing_json import save_trainer_state, write_atomic
from .protocol import Preflight

RESUME_DIR = "xfed_resume"
STATE_FILE = "state.json"
TENSORS_FILE = "trainable.safetensors"
STRATEGY_FILE = "strategy.safetensors"  # the assist trainer's server-optimizer state (moments), when it has any
TRAINER_STATE_NAME = "trainer_state.json"  # the Trainer's own file name (TRAINER_STATE_NAME in transformers)


def checkpoint_dir(output_dir: Path, round_idx: int) -> Path:
    return Path(output_dir) / f"checkpoint-{round_idx}"


def save_round_state(output_dir: Path, round_idx: int, rounds: int, tensors: dict[str, np.ndarray],
                     trainer: Any | None, *, node: str, attempt: int, job: dict[str, str] | None = None,
                     strategy: Any | None = None, dp_seed: int | None = None) -> Path:
    """Write checkpoint-{round_idx}/xfed_resume/ (tensors, trainer state, the assist trainer's `strategy`
    state, this party's DP noise seed), `state.json` last."""
    from safetensors.numpy import save_file

    from xfed.diskio import writing

    folder = checkpoint_dir(output_dir, round_idx) / RESUME_DIR
    (folder / STATE_FILE).unlink(missing_ok=True)  # incomplete until rewritten below
    folder.mkdir(parents=True, exist_ok=True)
    with writing(folder / TENSORS_FILE):  # a full disk names the file, not a raw SafetensorError
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / TENSORS_FILE))
    step = None
    if trainer is not None:
        # the same files, taken at the same point of the step, as the Trainer's own checkpoints
        trainer._save_optimizer_and_scheduler(str(folder))
        trainer._save_scaler(str(folder))
        trainer._save_rng_state(str(folder))
        save_trainer_state(trainer.state, folder / TRAINER_STATE_NAME)  # save_to_json's file, incrementally
        step = int(trainer.state.global_step)
    state = {"round": round_idx, "rounds": rounds, "step": step, "node": node, "attempt": attempt,
             "trainer_state": trainer is not None, "job": dict(job or {})}  # whose state: --resume checks it
    if strategy is not None:
        strategy_state = strategy.state()
        if strategy_state:
            save_file({k: np.ascontiguousarray(v) for k, v in strategy_state.items()}, str(folder / STRATEGY_FILE))
        state["strategy"] = {"name": strategy.name, "tensors": len(strategy_state)}
    if dp_seed is not None:  # the party's own secret, like its adapter: a resumed attempt draws the same noise
        state["dp_seed"] = f"{dp_seed:x}"
    write_atomic(folder / STATE_FILE, json.dumps(state, indent=1))
    return folder


def read_state(output_dir: Path, round_idx: int) -> dict[str, Any] | None:
    """The round's `state.json`, or None when the round's resume state is missing or incomplete."""
    path = checkpoint_dir(output_dir, round_idx) / RESUME_DIR / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("round") != round_idx:
        return None
    if not (path.parent / TENSORS_FILE).is_file():
        return None
    return state


def _rounds_on_disk(output_dir: Path) -> list[int]:
    """The k of every checkpoint-{k} folder, ascending."""
    try:
        names = [p.name for p in Path(output_dir).iterdir() if p.is_dir()]
    except OSError:
        return []
    return sorted(int(n[len("checkpoint-"):]) for n in names
                  if n.startswith("checkpoint-") and n[len("checkpoint-"):].isdigit())


def last_complete_round(output_dir: Path) -> int:
    """The highest round with a complete resume state (0 when none).

    A state is self-contained (aggregate + trainer state), and older ones are pruned, so no chain
    from round 1 is needed; a round killed while saving has no state.json and does not count.
    """
    for k in reversed(_rounds_on_disk(output_dir)):
        if k > 0 and read_state(output_dir, k) is not None:
            return k
    return 0


# What a resume can still need: the newest two rounds (the parties' last complete rounds differ by at most one).
KEEP_RESUME_ROUNDS = 2


def prune(output_dir: Path, round_idx: int, save_total_limit: int | None = None, pruned_for: int = 0) -> None:
    """After round `round_idx`'s state is complete: drop resume states older than the newest two, and
    with `save_total_limit` N the adapters of all but the newest N checkpoints (never a kept resume state).

    `pruned_for` p > 0: this process already pruned for round p, so only the rounds that call left
    alone are looked at (not every checkpoint on disk each round: that grew with the rounds)."""
    limit = save_total_limit if save_total_limit and save_total_limit > 0 else 0
    if pruned_for > 0:
        first = max(1, pruned_for - max(KEEP_RESUME_ROUNDS, limit) + 1)
        rounds = [k for k in range(first, round_idx + 1) if checkpoint_dir(output_dir, k).is_dir()]
    else:
        rounds = [k for k in _rounds_on_disk(output_dir) if k <= round_idx]
    for k in rounds:
        folder = checkpoint_dir(output_dir, k)
        if k <= round_idx - KEEP_RESUME_ROUNDS:
            shutil.rmtree(folder / RESUME_DIR, ignore_errors=True)
        if limit and k <= round_idx - limit:
            for entry in folder.iterdir():
                if entry.is_dir() and entry.name != RESUME_DIR:
                    shutil.rmtree(entry)
                elif not entry.is_dir():
                    entry.unlink(missing_ok=True)
            if not any(folder.iterdir()):
                folder.rmdir()


def resume_round(ctx: OperatorContext, output_dir: Path) -> int | None:
    """What a party adds to its preflight report on a resumed attempt: its last complete round."""
    return last_complete_round(output_dir) if ctx.attempt > 0 else None


def agree_round(ctx: OperatorContext, own_output_dir: Path, reports: Mapping[str, Preflight]) -> int:
    """The round every party can continue from (the lowest last complete round); 0 on a first attempt."""
    if ctx.attempt <= 0:
        return 0
    rounds = {ctx.node_id: last_complete_round(own_output_dir)}
    for node, report in reports.items():
        rounds[node] = report.resume_round or 0  # a party without one starts over
    start = min(rounds.values())
    message = ", ".join(f"{n}: {r}" for n, r in sorted(rounds.items()))
    ctx.report("log", {"message": f"attempt {ctx.attempt}: resuming after round {start} "
                                  f"(last complete round per party: {message})"})
    return start


def restore(ctx: OperatorContext, output_dir: Path, start: int, rounds: int) -> dict[str, np.ndarray] | None:
    """The aggregated tensors of round `start` (None for start 0); later, stale resume states are removed."""
    for later in range(start + 1, rounds + 1):  # their rounds are trained again: never resume from a mix
        shutil.rmtree(checkpoint_dir(output_dir, later) / RESUME_DIR, ignore_errors=True)
    if start <= 0:
        return None
    state = read_state(output_dir, start)
    where = checkpoint_dir(output_dir, start) / RESUME_DIR
    if state is None:
        raise JobError(f"{ctx.node_id}: {where}: no complete resume state for round {start}")
    check_owner(ctx, where, state)
    if int(state.get("rounds", -1)) != rounds:
        raise JobError(f"{ctx.node_id}: {where}: written for {state.get('rounds')} rounds, "
                       f"but this attempt plans {rounds} (the configuration changed; start a new job)")
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(where / TENSORS_FILE))
    except (OSError, SafetensorError) as exc:
        raise JobError(f"{ctx.node_id}: {where / TENSORS_FILE}: unreadable ({exc})") from None


def check_owner(ctx: OperatorContext, where: Path, state: dict[str, Any]) -> None:
    """JobError naming the owner when a resume state was written by another job (an id reused after
    Redis lost its data, a folder copied in): resuming from it would continue someone else's model."""
    recorded = state.get("job")
    if not isinstance(recorded, dict) or not recorded:
        return  # written before states named their job; the output folder's marker was checked at set-up
    ours = job_identity(ctx)
    if not same_job(recorded, ours):
        raise JobError(f"{ctx.node_id}: {where}: resume state of {describe(recorded)}, not of this "
                       f"{describe(ours)}; refusing to resume from another job's state")


def dp_seed(output_dir: Path, start: int) -> int | None:
    """The DP noise seed saved with round `start` (None on a first attempt or when the job had no DP)."""
    value = (read_state(output_dir, start) or {}).get("dp_seed") if start > 0 else None
    try:
        return int(value, 16) if isinstance(value, str) else None
    except ValueError:
        return None


def restore_strategy(ctx: OperatorContext, output_dir: Path, start: int, strategy: Any) -> None:
    """Put the server strategy's state of round `start` back (after `start()` set the global tensors), so a
    resumed job continues the optimizer exactly; refuses a state saved by another strategy."""
    if start <= 0:
        return
    state = read_state(output_dir, start) or {}
    where = checkpoint_dir(output_dir, start) / RESUME_DIR
    saved = state.get("strategy") or {"name": "fedavg", "tensors": 0}  # states from before strategies: FedAvg
    if saved.get("name") != strategy.name:
        raise JobError(f"{ctx.node_id}: {where}: saved by strategy {saved.get('name')!r}, but this attempt "
                       f"uses {strategy.name!r} (the configuration changed; start a new job)")
    if not saved.get("tensors"):
        strategy.load_state({})
        return
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(where / STRATEGY_FILE))
    except (OSError, SafetensorError) as exc:
        raise JobError(f"{ctx.node_id}: {where / STRATEGY_FILE}: unreadable ({exc})") from None
    if len(tensors) != int(saved["tensors"]):
        raise JobError(f"{ctx.node_id}: {where / STRATEGY_FILE}: {len(tensors)} tensors, state.json says "
                       f"{saved['tensors']}")
    strategy.load_state(tensors)


def trainer_checkpoint(ctx: OperatorContext, output_dir: Path, start: int, trainer: Any) -> str | None:
    """The folder to pass as `resume_from_checkpoint` (None when starting from scratch).

    The Trainer would also load model weights from it; the aggregate is already in place (loaded
    from the assist trainer's broadcast), so that step is switched off for this Trainer.
    """
    if start <= 0 or trainer is None:
        return None
    folder = checkpoint_dir(output_dir, start) / RESUME_DIR
    state = read_state(output_dir, start) or {}
    if not state.get("trainer_state") or not (folder / TRAINER_STATE_NAME).is_file():
        raise JobError(f"{ctx.node_id}: {folder}: round {start} was saved without the trainer state "
                       "(optimizer, LR schedule, RNG) that training needs to continue")
    # The Trainer restores optimizer, LR schedule, RNG and step, and skips the batches already seen; the
    # sampler's seed is the process's last manual_seed (Trainer() seeds args.seed), equal in every attempt.
    trainer._load_from_checkpoint = _keep_loaded_weights
    return str(folder)


def _keep_loaded_weights(*_args: Any, **_kwargs: Any) -> None:
    """Stands in for Trainer._load_from_checkpoint: the weights are the aggregate we loaded ourselves."""


def earlier_records(metrics_path: Path, start: int) -> list[dict[str, Any]]:
    """The round records of rounds 1..start from the previous attempt's metrics.json (kept on resume)."""
    try:
        rounds = json.loads(Path(metrics_path).read_text()).get("rounds") or []
    except (OSError, ValueError, AttributeError):
        return []
    return [r for r in rounds if isinstance(r, dict) and isinstance(r.get("round"), int) and r["round"] <= start]
