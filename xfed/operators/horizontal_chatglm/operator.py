"""`run(ctx)`: one stage of federated LoRA / P-tuning v2 on one node (label trainer or assist trainer).

Order of a job: authoritative params (assist → trainers, conflicts reported key by key) →
local set-up → preflight (fingerprints + step counts → number of rounds, or a diff table) →
aggregation set-up (DH for otp) → the assist trainer's initial adapter → rounds → final/.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from xfed.aggregation import LeafBase, RootBase, SecAggRoot, make_leaf, make_root, tensors_digest
from xfed.aggregation.privacy import Privatizer
from xfed.config import fill_placeholders
from xfed.errors import ConfigError, JobError, PreflightError, XfedError, blaming
from xfed.operators.context import OperatorContext

from ..outputs import claim_output_dir, job_identity
from . import ddp, protocol, rejoin, reporting, resume
from .adapter_state import extract_trainable, load_trainable, save_adapter
from .config import Params, validated_params
from .fedprox import ProximalCallback
from .merge import merge_authoritative
from .metrics import MetricsLog
from .party import (
    PartyData,
    adapter_path,
    aggregates_only,
    build_adapter,
    fingerprints,
    load_base_model,
    load_base_skeleton,
    load_party_data,
    set_threads,
)
from .preflight import compare_fingerprints, conflict_warnings
from .rounds import AggregateFn, Evaluator, FederatedCallback, RoundRunner
from .schedule import count_rounds, party_schedule
from .training import build_trainer, count_optimizer_steps, training_arguments

log = logging.getLogger(__name__)

# A round's wait lasts as long as the slowest party's share of training (hours for a 6B model on a slow
# party). A dead party fails the job by heartbeat within seconds, which ends every wait at once; this
# bound only catches a party that is alive but stuck.
ROUND_TIMEOUT_S = float(os.environ.get("XFED_ROUND_TIMEOUT", str(6 * 3600)))


def run(ctx: OperatorContext) -> dict[str, Any]:
    """Run this node's part of the stage; returns a small JSON-able summary."""
    set_threads()
    if ctx.identity == "assist_trainer":
        return _Assist(ctx).run()
    if ctx.identity == "label_trainer":
        return _Label(ctx).run()
    raise ConfigError(f"{ctx.node_id}: identity {ctx.identity!r} is not label_trainer or assist_trainer")


def _party_params(node: str, hello: protocol.Hello) -> Params:
    """A label trainer's own train_params from its hello (partial), or why it could not send them."""
    if hello.error is not None:
        raise blaming(JobError(f"{node} failed its set-up: {hello.error}"), node)
    try:
        return validated_params(hello.train_params, node, complete=False)
    except ConfigError as exc:
        raise blaming(exc, node) from None


def fed_nodes(ctx: OperatorContext) -> list[str]:
    """Every participant of the job (label trainers and the assist trainer)."""
    return [*ctx.trainer_ids, *([ctx.assist_id] if ctx.assist_id else [])]


def _warn(ctx: OperatorContext, message: str) -> None:
    log.warning(message)
    ctx.report("warning", {"message": message})


class _KeepWarnings:
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


def _output_dir(ctx: OperatorContext) -> Path:
    """output.path with [JOB_ID] / [NODE_ID] / [STAGE_ID] filled in."""
    path = str(ctx.stage.output.path or "")
    if not path:
        raise ConfigError(f"{ctx.node_id}: output.path: required (where adapters and metrics.json go)")
    return Path(fill_placeholders(path, job_id=ctx.job_id, node_id=ctx.node_id, stage_id=ctx.stage_id))


class _Party:
    """What both roles share: local set-up, outputs, and the round loop around the Trainer."""

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
        self.output_dir = claim_output_dir(_output_dir(self.ctx), self.ctx)  # never another job's folder
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

        def after_checkpoint(round_idx: int) -> None:
            resume.save_round_state(self.output_dir, round_idx, rounds, extract_trainable(self.peft_model),
                                    self.trainer, node=self.node, attempt=self.ctx.attempt,
                                    job=job_identity(self.ctx),
                                    strategy=self.root.strategy if self.root is not None else None,
                                    dp_seed=privatizer.seed if privatizer is not None else None)
            resume.prune(self.output_dir, round_idx, self.save_total_limit)

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
            checkpoint = (rejoin.prepare_trainer(self.trainer, self.ctx.work_dir / "rejoin", schedule, start)
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
        _warn(self.ctx, message)


class _Label(_Party):
    def run(self) -> dict[str, Any]:
        ctx = self.ctx
        try:  # the keys this party set; with an assist trainer, its train_params complete them
            self.own = validated_params(ctx.stage.train_info.train_params, self.node, complete=ctx.assist_id is None)
        except ConfigError as exc:
            if ctx.assist_id is not None and not ctx.incarnation:  # the assist trainer fails fast too
                protocol.send(ctx, ctx.assist_id, protocol.Hello(error=str(exc)))
            raise
        nproc = ddp.nproc_of(ctx.stage, identity=ctx.identity, node=self.node, cuda=ddp.wants_cuda(self.own))
        if ctx.assist_id is None:
            if len(ctx.trainer_ids) > 1:
                raise ConfigError(f"{self.node}: {len(ctx.trainer_ids)} label trainers need an assist_trainer in fed_info")
            if nproc > 1:
                raise ConfigError(f"{self.node}: model_info.config.nproc_per_node {nproc} needs an assist_trainer "
                                  "(a party training alone runs as one process)")
            return self._run_alone()
        if ctx.incarnation:  # restarted into the running stage: no preflight (rejoin.py)
            if nproc > 1:
                return rejoin.stay_out(self, f"{self.node}: a restarted DDP party (nproc_per_node {nproc}) cannot "
                                             "rejoin a running stage yet; it stays out until the stage ends")
            return rejoin.run_label(self)
        if nproc == 1:
            return self._run_federated()
        # rank 0 of a DDP group: ranks 1.. start now, so their imports overlap the parameter exchange
        self.group = ddp.DdpGroup.start(ctx, nproc, cuda=ddp.wants_cuda(self.own), should_stop=ctx.should_stop)
        return self.group.run(self._run_federated)

    def _run_federated(self) -> dict[str, Any]:
        ctx = self.ctx
        assist = ctx.assist_id
        assert assist is not None  # run() took the path without one
        protocol.send(ctx, assist, protocol.Hello(train_params=self.own.model_dump(mode="json", exclude_unset=True)))
        reply = protocol.recv(ctx, assist, protocol.ParamsReply)
        if not reply.ok:  # the assist trainer's own parameters, or another party's, are wrong
            culprit = reply.blame if reply.blame in fed_nodes(ctx) else assist
            raise blaming(JobError(reply.error or "assist trainer refused the parameters"), culprit)
        for line in conflict_warnings(self.node, reply.conflicts):
            self.warnings.append(line)  # the assist trainer reports them to the job's events
            log.warning(line)
        try:
            if self.group is not None:  # every rank sets up with the federation's parameters
                self.group.share_json(reply.train_params)
            self.setup(validated_params(reply.train_params, self.node))
            if self.group is not None:
                ddp.check_device(self.group, self.trainer, self.node)
        except XfedError as exc:  # tell the assist trainer, so it fails fast too
            protocol.send(ctx, assist, protocol.Preflight(error=str(exc)))
            raise
        if self.trainer is None:
            raise ConfigError(f"{self.node}: input.trainset: a label trainer needs training data")
        report = protocol.Preflight(fingerprints=self.fingerprints, num_steps=self.total_steps,
                                    num_examples=self.data.num_examples if self.data else 0,
                                    resume_round=resume.resume_round(ctx, self.output_dir))
        # a model-free assist trainer starts everyone from the first trainer's adapter
        protocol.send(ctx, assist, report, tensors=extract_trainable(self.peft_model) if reply.send_initial else None)
        plan = protocol.recv(ctx, assist, protocol.Plan)
        if not plan.ok:  # someone else's failure: the job records the party it names, not us
            culprit = plan.blame if plan.blame in fed_nodes(ctx) else assist
            raise blaming(PreflightError(plan.error or "preflight failed"), culprit)
        self.warnings.extend(plan.warnings)
        leaf = make_leaf(_KeepWarnings(ctx, self.warnings), self.params.enc, timeout=ROUND_TIMEOUT_S,
                         min_parties=self.aggregation.min_parties)
        leaf.setup()
        start = plan.resume_from
        resume.restore(ctx, self.output_dir, start, plan.rounds)  # checks; the assist sends the aggregate
        load_trainable(self.peft_model, leaf.receive_initial(), source=f"initial adapter from {assist}")
        if self.group is not None:  # the plan and the starting adapter to ranks 1..
            self.group.share_json({"rounds": plan.rounds, "start": start})
            self.group.share_trainable(self.peft_model)
        return self.run_rounds(plan.rounds, leaf.aggregate, leaf, start)

    def _run_alone(self) -> dict[str, Any]:
        """One party, no assist trainer (XFL's 1party demos): local training with the same checkpoints."""
        self.setup(self.own)
        if self.trainer is None:
            raise ConfigError(f"{self.node}: input.trainset: a label trainer needs training data")
        if self.params.enc.method == "otp":
            self.warn(f"{self.node}: encryption otp with a single party masks nothing; training locally")
        if self.aggregation.dp is not None:
            self.warn(f"{self.node}: aggregation.dp is ignored by a single party: it releases nothing to anyone")
        rounds = count_rounds(self.aggregation.every, {self.node: self.total_steps})
        start = resume.agree_round(self.ctx, self.output_dir, {})
        restored = resume.restore(self.ctx, self.output_dir, start, rounds)
        if restored is not None:
            load_trainable(self.peft_model, restored, source=f"checkpoint-{start} of {self.node}")
        return self.run_rounds(rounds, lambda _round, tensors, _weight: tensors, None, start)


class _Assist(_Party):
    def run(self) -> dict[str, Any]:
        ctx = self.ctx
        trainers = list(ctx.trainer_ids)
        if not trainers:
            raise ConfigError(f"{self.node}: fed_info.trainer lists no label trainers")
        hellos = {node: hello for node, (hello, _) in protocol.gather(ctx, trainers, protocol.Hello).items()}
        model_free = aggregates_only(ctx.stage)
        try:
            own = self.own = validated_params(ctx.stage.train_info.train_params, self.node)
            parties = {node: _party_params(node, hellos[node]) for node in trainers}
        except XfedError as exc:  # every label trainer waits for its parameters: each hears why not
            for node in trainers:
                protocol.send(ctx, node, protocol.ParamsReply(ok=False, error=str(exc), blame=exc.blame or self.node))
            raise
        for node in trainers:
            effective, conflicts = merge_authoritative(own, parties[node])
            for line in conflict_warnings(node, conflicts):
                self.warn(line)
            protocol.send(ctx, node, protocol.ParamsReply(
                train_params=effective.model_dump(mode="json", exclude_unset=True), conflicts=conflicts,
                send_initial=model_free and node == trainers[0]))
        try:
            self.setup(own, model_free=model_free)
            got = protocol.gather(ctx, trainers, protocol.Preflight)
            reports = {node: report for node, (report, _) in got.items()}
            failed = {node: r.error for node, r in reports.items() if r.error}
            if failed:
                node, error = sorted(failed.items())[0]
                raise blaming(JobError(f"{node} failed its set-up: {error}"), node)
            by_node = {self.node: self.fingerprints, **{n: reports[n].fingerprints for n in trainers}}
            try:
                compare_fingerprints(self.node, by_node)
            except PreflightError as exc:
                if exc.table:
                    ctx.report("log", {"message": "preflight diff table\n" + exc.table})
                raise
            steps = {n: reports[n].num_steps for n in trainers}
            if self.trainer is not None:
                steps[self.node] = self.total_steps
            rounds = count_rounds(self.aggregation.every, steps)
            start = resume.agree_round(ctx, self.output_dir, reports)
            restored = resume.restore(ctx, self.output_dir, start, rounds)
            if model_free:  # layout checked against our own skeleton's adapter
                load_trainable(self.peft_model, got[trainers[0]][1], source=f"initial adapter from {trainers[0]}")
        except XfedError as exc:
            for node in trainers:
                protocol.send(ctx, node, protocol.Plan(ok=False, error=str(exc), blame=exc.blame or self.node))
            raise
        for node in trainers:
            protocol.send(ctx, node, protocol.Plan(ok=True, rounds=rounds, warnings=self.warnings, resume_from=start))
        if restored is not None:  # a resumed attempt: everyone continues from the aggregate of round `start`
            load_trainable(self.peft_model, restored, source=f"checkpoint-{start} of {self.node}")
        # warns on otp < 2 masked parties
        root = make_root(_KeepWarnings(ctx, self.warnings), self.params.enc, timeout=ROUND_TIMEOUT_S,
                         min_parties=self.aggregation.min_parties,
                         strategy=self.aggregation.build_strategy(rounds))
        if isinstance(root, SecAggRoot):  # dropout-tolerant secure aggregation: restarted trainers may rejoin
            root.last_round = rounds
        root.setup()
        root.broadcast_initial(extract_trainable(self.peft_model))
        resume.restore_strategy(ctx, self.output_dir, start, root.strategy)  # moments of round `start`
        self.root = root
        desk = rejoin.RejoinDesk(ctx, root, self.own, rounds, self.warn)  # restarted trainers' plan requests
        return self.run_rounds(rounds, desk.aggregate, root, start)
