"""A party's run of a horizontal_chatglm stage, what both roles share: local set-up (model, adapter,
data, Trainer), outputs, client-level DP, and the round loop around the Trainer.

The roles (operator.py) decide where the parameters and the plan come from: a label trainer from the
assist trainer, the assist trainer from its own config and the preflight; a restarted label trainer
from the assist trainer's answer to its rejoin (rejoin.py).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from xfed.aggregation import LeafBase, RootBase, tensors_digest
from xfed.aggregation.privacy import Privatizer
from xfed.config import fill_placeholders
from xfed.errors import ConfigError, JobError
from xfed.operators.context import OperatorContext

from ..outputs import claim_output_dir, job_identity
from . import ddp, reporting, resume
from .adapter_state import extract_trainable, save_adapter
from .config import Params
from .fedprox import ProximalCallback
from .metrics import MetricsLog
from .party import (
    PartyData,
    adapter_path,
    build_adapter,
    fingerprints,
    load_base_model,
    load_base_skeleton,
    load_party_data,
)
from .rejoin_trainer import prepare_rejoin
from .rounds import AggregateFn, Evaluator, FederatedCallback, RoundRunner
from .schedule import party_schedule
from .training import build_trainer, count_optimizer_steps, training_arguments

log = logging.getLogger(__name__)

# A round's wait lasts as long as the slowest party's share of training (hours for a 6B model on a slow
# party). A dead party fails the job by heartbeat within seconds, which ends every wait at once; this
# bound only catches a party that is alive but stuck.
ROUND_TIMEOUT_S = float(os.environ.get("XFED_ROUND_TIMEOUT", str(6 * 3600)))



def warn_event(ctx: OperatorContext, message: str) -> None:
    log.warning(message)
    ctx.report("warning", {"message": message})


class KeepWarnings:
    """The ctx an aggregator sees: its warning events (otp with < 2 masked parties) also land in this
    node's result and metrics.json, so the job record keeps them, not only the event stream."""

    def __init__(self, ctx: OperatorContext, sink: list[str]) -> None:
        self._ctx, self._sink = ctx, sink

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def report(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "warning" and isinstance(data, dict) and data.get("message"):
            self._sink.append(str(data["message"]))
        self._ctx.report(kind, data)


def output_dir_of(ctx: OperatorContext) -> Path:
    """output.path with [JOB_ID] / [NODE_ID] / [STAGE_ID] filled in."""
    path = str(ctx.stage.output.path or "")
    if not path:
        raise ConfigError(f"{ctx.node_id}: output.path: required (where adapters and metrics.json go)")
    return Path(fill_placeholders(path, job_id=ctx.job_id, node_id=ctx.node_id, stage_id=ctx.stage_id))


class Party:
    """What both roles share: local set-up, outputs, and the round loop around the Trainer."""

    own: Params  # the keys this party set (its role's run() validates them)

    def __init__(self, ctx: OperatorContext):
        self.ctx = ctx
        self.node = ctx.node_id
        self.warnings: list[str] = []
        self.root: RootBase | None = None  # the assist trainer's aggregator (its strategy state is resumed)
        self.group: ddp.DdpGroup | None = None  # a label trainer's DDP group (nproc_per_node > 1): rank 0

    # -- local set-up ---------------------------------------------------------------------------
    def setup(self, params: Params, model_free: bool = False) -> None:
        """model_free: an aggregating assist trainer; the base model's layout only (meta device), the
        adapter's trainable tensors in real memory, filled from a trainer's initial adapter."""
        self.params = params
        self.aggregation = params.agg
        self.proximal: ProximalCallback | None = None
        trainer_params = params.trainer_kwargs()
        self.output_dir = claim_output_dir(output_dir_of(self.ctx), self.ctx)  # never another job's folder
        trainer_params.setdefault("run_name", reporting.run_name(self.ctx.job_id, self.node))
        reporting.check_backends(trainer_params.get("report_to"), self.node)
        reporting.set_context_env(self.ctx.job_id, self.node, self.ctx.identity)
        args = self.args = training_arguments(trainer_params, self.ctx.work_dir / "trainer")
        self.save_total_limit = args.save_total_limit  # checkpoints whose adapters are kept (None: all)
        if model_free:
            from xfed.models.skeleton import materialize_trainable

            self.model, self.tokenizer, self.model_dir = load_base_skeleton(self.ctx.stage)
            self.peft_model = build_adapter(self.model, params, None, args.seed)
            materialize_trainable(self.peft_model)
            self.data, self.trainer, self.total_steps = None, None, 0
            self._finish_setup(params, args)
            return
        self.model, self.tokenizer, self.model_dir = load_base_model(self.ctx.stage, args.use_cpu)
        resume = adapter_path(self.ctx.stage)
        if resume and self.ctx.identity == "label_trainer" and self.ctx.assist_id:
            # everyone starts from the assist trainer's initial adapter; a label trainer's own would be replaced
            self.warn(f"{self.node}: input.adapter_model.path is ignored: every party starts from the assist "
                      "trainer's adapter (set input.adapter_model.path there to continue training)")
            resume = None
        self.peft_model = build_adapter(self.model, params, resume, args.seed)
        self.data: PartyData | None = load_party_data(self.ctx.stage, params, self.tokenizer, self.peft_model)
        self.trainer = None
        self.total_steps = 0
        if self.data is not None:
            self.trainer = build_trainer(self.peft_model, args, self.data.train, self.data.collator, callbacks=[])
            self.total_steps = count_optimizer_steps(self.trainer)
            if self.aggregation.fedprox_mu > 0:
                self.proximal = ProximalCallback(self.peft_model, self.aggregation.fedprox_mu)
                self.trainer.add_callback(self.proximal)
        self._finish_setup(params, args)

    def _finish_setup(self, params: Params, args: Any) -> None:
        self.reporter = reporting.Reporter(args, self.trainer, self.output_dir, job_id=self.ctx.job_id,
                                           node=self.node, identity=self.ctx.identity)
        self.fingerprints = fingerprints(self.model_dir, self.tokenizer, self.peft_model, params)
        self.weighting = params.agg.weighting
        n = self.data.num_examples if self.data is not None else 0
        self.weight = float(n) if self.weighting == "num_examples" else 1.0
        self.metrics = MetricsLog(self.output_dir / "metrics.json", {
            "job_id": self.ctx.job_id, "node": self.node, "identity": self.ctx.identity,
            "peft": params.peft_kind, "encryption": params.enc.method,
            "num_examples": n, "total_steps": self.total_steps, "weighting": self.weighting,
        })

    def evaluator(self) -> Evaluator | None:
        d = self.data
        if d is None or not (d.val_features or d.val_prompts):
            return None
        dataset = self.params.data
        return Evaluator(d.val_features, d.collator, d.val_prompts, d.val_answers, self.tokenizer,
                         batch_size=self.args.per_device_eval_batch_size, max_new_tokens=dataset.max_dst_length,
                         metrics=dataset.metrics)

    # -- rounds -----------------------------------------------------------------------------------
    def run_rounds(self, rounds: int, aggregate: AggregateFn, aggregator: LeafBase | RootBase | None,
                   start: int = 0, rejoined: bool = False) -> dict[str, Any]:
        """Rounds start + 1 .. rounds (start > 0: a resumed attempt, state restored by resume.py, or a
        restarted trainer admitted after round `start`: rejoin.py)."""
        trains = self.trainer is not None
        schedule = party_schedule(rounds, self.total_steps) if trains else party_schedule(rounds, rounds)
        if start > 0:
            self.metrics.rounds = resume.earlier_records(self.metrics.path, start)
        self.metrics.write(rounds=rounds, schedule_steps=list(schedule.steps) if trains else [])

        pruned_for = 0  # the round this process last pruned for (0: none yet, look at every checkpoint)

        def after_checkpoint(round_idx: int) -> None:
            nonlocal pruned_for
            resume.save_round_state(self.output_dir, round_idx, rounds, extract_trainable(self.peft_model),
                                    self.trainer, node=self.node, attempt=self.ctx.attempt,
                                    job=job_identity(self.ctx),
                                    strategy=self.root.strategy if self.root is not None else None,
                                    dp_seed=privatizer.seed if privatizer is not None else None)
            resume.prune(self.output_dir, round_idx, self.save_total_limit, pruned_for=pruned_for)
            pruned_for = round_idx

        privatizer = self.privatizer(rounds, resume.dp_seed(self.output_dir, start)) if aggregator is not None else None
        anchors = [a for a in (self.proximal, privatizer) if a is not None]
        start_tensors = extract_trainable(self.peft_model)  # the global adapter round start + 1 begins from
        for anchor in anchors:
            anchor.set_anchor(start_tensors)
        runner = RoundRunner(self.ctx, self.peft_model, aggregate, aggregator, schedule, self.weight,
                             self.output_dir, self.metrics, evaluator=self.evaluator(), trains=trains,
                             after_checkpoint=after_checkpoint, reporter=self.reporter, privatizer=privatizer,
                             anchors=anchors, after_load=self.group and (lambda: self.group.share_trainable(self.peft_model)))
        self.reporter.start()
        started = self.metrics.started = time.monotonic()  # ETA counts training time, not set-up and preflight
        if trains and start < rounds:
            callback = FederatedCallback(runner)
            callback.rounds_done = start
            self.trainer.add_callback(callback)
            checkpoint = (prepare_rejoin(self.trainer, self.ctx.work_dir / "rejoin", schedule, start)
                          if rejoined else resume.trainer_checkpoint(self.ctx, self.output_dir, start, self.trainer))
            self.trainer.train(resume_from_checkpoint=checkpoint)
            if callback.rounds_done != rounds:
                raise JobError(f"{self.node}: training ended after {callback.rounds_done} of {rounds} rounds")
        elif not trains:
            for round_idx in range(start + 1, rounds + 1):
                if self.ctx.should_stop():
                    raise JobError(f"{self.node}: job stopped before round {round_idx}")
                runner.run_round(round_idx, None)
        final = save_adapter(self.peft_model, self.output_dir / "final")
        self.reporter.save_state()  # the steps logged after the last round too
        self.reporter.save_state(final)
        self.reporter.finish()
        # the evidence of a completed stage: the last aggregate's digest, the same on every party
        agreed = aggregator.last_digest if aggregator is not None else None
        final_digest = agreed or tensors_digest(extract_trainable(self.peft_model))
        self.metrics.write(final=str(final), elapsed_s=round(time.monotonic() - started, 2), warnings=self.warnings)
        last = self.metrics.rounds[-1] if self.metrics.rounds else {}
        return {"rounds": rounds, "first_round": start + 1, "final": str(final), "final_digest": final_digest,
                "metrics": str(self.metrics.path),
                "last_round": {k: v for k, v in last.items() if isinstance(v, (int, float, str))},
                "warnings": self.warnings}

    def privatizer(self, rounds: int, seed: int | None) -> Privatizer | None:
        """Client-level DP (aggregation.dp) for a federation: σ calibrated over `rounds`; the noise share
        depends on whether the aggregator sees each upload (plain) or only the masked sum (otp); `seed`:
        a resumed attempt's noise seed (None: a fresh one from the OS CSPRNG)."""
        dp = self.aggregation.dp
        if dp is None:
            return None
        kind = self.params.enc.method
        privatizer = Privatizer(dp, rounds, kind, masked_parties=len(self.ctx.trainer_ids), seed=seed)
        self.metrics.write(dp={"epsilon": dp.epsilon, "delta": dp.delta, "clip_norm": dp.clip_norm,
                               "accountant": dp.accountant, "noise_multiplier": privatizer.sigma,
                               "party_noise_std": privatizer.std, "encryption": kind})
        return privatizer

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        warn_event(self.ctx, message)
