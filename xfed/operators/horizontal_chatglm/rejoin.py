"""A restarted label trainer rejoining a running horizontal_chatglm stage (docs/SECAGG.md §7).

The restarted process (incarnation k > 0) cannot take part in the preflight exchange: the others
finished it long ago. What the preflight gave its first incarnation it gets instead as follows:

- the effective train_params and the number of rounds: from the assist trainer, in answer to
  `hcg.rejoin` (the rejoiner's own train_params, like `hcg.hello`). The assist trainer reads its
  incarnation-k mailbox once the secure-aggregation root listens to it (the scheduler's membership
  record, read once per round) and answers `hcg.replan` {ok, train_params, rounds} after a round's
  aggregate. Params come from the assist, not from the rejoiner's own file, because the label
  trainers of an XFL config usually hold only local keys (batch size, device).
- the global adapter: the secure-aggregation welcome carries the mean of the round before the
  rejoiner's first round (`leaf.receive_initial()`), which replaces its fresh adapter.
- fingerprints are not compared again: the first incarnation passed the preflight with the same
  configuration; a different adapter layout still fails when the mean is loaded.

Training: the Trainer resumed at the admission step (rejoin_trainer.py).
"""
from __future__ import annotations

import time
from typing import Any, Callable

from xfed.aggregation import RootBase, SecAggLeaf, SecAggRoot, make_leaf
from xfed.errors import ConfigError, JobError, XfedError, blaming
from xfed.operators.context import OperatorContext

from . import protocol
from .adapter_state import load_trainable
from .config import Params, validated_params
from .merge import merge_authoritative
from .party_stage import ROUND_TIMEOUT_S, KeepWarnings, Party
from .preflight import conflict_warnings


def request_plan(ctx: OperatorContext, own: Params) -> protocol.Replan:
    """The rejoiner's side: its own train_params to the assist trainer; the effective ones and the rounds back."""
    assist = ctx.assist_id
    assert assist is not None  # only a label trainer of a federation rejoins
    protocol.send(ctx, assist, protocol.Rejoin(train_params=own.model_dump(mode="json", exclude_unset=True),
                                               incarnation=ctx.incarnation))
    return protocol.recv(ctx, assist, protocol.Replan)


class RejoinDesk:
    """The assist trainer's side: answers each restarted trainer's `hcg.rejoin` once, after a round."""

    def __init__(self, ctx: OperatorContext, root: RootBase, own: Params, rounds: int,
                 warn: Callable[[str], None]) -> None:
        self.ctx, self.root, self.own, self.rounds, self.warn = ctx, root, own, rounds, warn
        self.answered: dict[str, int] = {}

    def aggregate(self, round_idx: int, tensors: Any, weight: float) -> Any:
        """The root's round, then the plan for whoever asked (the root read the membership in the round)."""
        mean = self.root.aggregate(round_idx, tensors, weight)
        self.serve()
        return mean

    def serve(self) -> None:
        listening = dict(self.root.listening) if isinstance(self.root, SecAggRoot) else {}  # restarted, not admitted
        waiting = {n: k for n, k in listening.items() if self.answered.get(n) != k}
        if not waiting:
            return
        comm = self.ctx.comm
        for node, k in waiting.items():
            comm.set_incarnation(node, k)  # reads already switched by the root; our answer goes there too
        got = comm.gather_until(sorted(waiting), protocol.Rejoin.tag, 0)
        for node, msg in sorted(got.items()):
            self.answered[node] = waiting[node]
            try:
                party = validated_params(protocol.parse(protocol.Rejoin, node, msg.meta).train_params, node,
                                         complete=False)
            except XfedError as exc:  # this restart stays out; the survivors go on
                self.warn(f"{node} (incarnation {waiting[node]}) cannot rejoin: {exc}")
                protocol.send(self.ctx, node, protocol.Replan(ok=False, error=str(exc)))
                continue
            effective, conflicts = merge_authoritative(self.own, party)
            for line in conflict_warnings(node, conflicts):
                self.warn(line)
            protocol.send(self.ctx, node, protocol.Replan(
                ok=True, train_params=effective.model_dump(mode="json", exclude_unset=True), rounds=self.rounds,
                conflicts=conflicts))
            self.ctx.report("log", {"message": f"{node} (incarnation {waiting[node]}) asked to rejoin: "
                                               "parameters sent; admitted at the next round boundary"})


def stay_out(party: Party, why: str) -> dict[str, Any]:
    """A restart that cannot rejoin: said once, then out of the stage until it ends (like a node the root
    never admits), so that the restart does not fail a job the survivors can finish."""
    party.warn(why)
    while not party.ctx.should_stop():
        time.sleep(1.0)
    raise JobError(f"job {party.ctx.job_id}: stopped")


def run_label(party: Party) -> dict[str, Any]:
    """A restarted label trainer's stage: the plan from the assist trainer, local set-up, the welcome's
    global adapter, then the rounds after the one it was admitted at."""
    ctx = party.ctx
    plan = request_plan(ctx, party.own)
    if not plan.ok:
        raise blaming(JobError(f"{party.node}: the assist trainer refused the rejoin: {plan.error}"), ctx.assist_id)
    for line in conflict_warnings(party.node, plan.conflicts):
        party.warnings.append(line)  # the assist trainer reports them to the job's events
    party.setup(validated_params(plan.train_params, party.node))
    if party.trainer is None:
        raise ConfigError(f"{party.node}: input.trainset: a label trainer needs training data")
    leaf = make_leaf(KeepWarnings(ctx, party.warnings), party.params.enc, timeout=ROUND_TIMEOUT_S,
                     min_parties=party.aggregation.min_parties)
    if not isinstance(leaf, SecAggLeaf):
        raise JobError(f"{party.node}: restarted into a stage whose aggregation has no rejoin "
                       "(encryption.otp.dropout is needed)")
    leaf.setup()  # sends the join request; the welcome comes at a round boundary
    load_trainable(party.peft_model, leaf.receive_initial(), source=f"global adapter from {ctx.assist_id} (rejoin)")
    first = int(leaf.start_round)
    # written with the first round's record; the first incarnation's records of the rounds it finished are kept
    party.metrics.header.update(first_round=first, incarnation=int(ctx.incarnation))
    return party.run_rounds(plan.rounds, leaf.aggregate, leaf, first - 1, rejoined=True)
