"""`run(ctx)`: one stage of federated LoRA / P-tuning v2 on one node (label trainer or assist trainer).

Order of a job: authoritative params (assist → trainers, conflicts reported key by key) →
local set-up → preflight (fingerprints + step counts → number of rounds, or a diff table) →
aggregation set-up (DH for otp) → the assist trainer's initial adapter → rounds → final/.
"""
from __future__ import annotations

import logging
from typing import Any

from xfed.aggregation import SecAggRoot, make_leaf, make_root
from xfed.errors import ConfigError, JobError, PreflightError, XfedError, blaming
from xfed.operators.context import OperatorContext

from . import ddp, protocol, rejoin, resume
from .adapter_state import extract_trainable, load_trainable
from .config import Params, validated_params
from .merge import merge_authoritative
from .party import aggregates_only, set_threads
from .party_stage import ROUND_TIMEOUT_S, KeepWarnings, Party
from .preflight import compare_fingerprints, conflict_warnings
from .schedule import count_rounds

log = logging.getLogger(__name__)


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


class _Label(Party):
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
        leaf = make_leaf(KeepWarnings(ctx, self.warnings), self.params.enc, timeout=ROUND_TIMEOUT_S,
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


class _Assist(Party):
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
        root = make_root(KeepWarnings(ctx, self.warnings), self.params.enc, timeout=ROUND_TIMEOUT_S,
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
