"""The operator's control messages between label trainers and the assist trainer (JSON meta only).

hello (trainer → assist: its own train_params) · params (assist → trainer: the authoritative
params and the conflicts found) · preflight (trainer → assist: fingerprints, steps, examples) ·
plan (assist → trainer: ok + number of rounds, or the preflight failure).
A model-free assist trainer (no training data: it never loads the base model) asks the first trainer,
in `params`, to attach its initial adapter tensors to `preflight`; it then broadcasts those.
Every wait is bounded; Comm itself gives up early when the job is stopped or failed.
"""
from __future__ import annotations

import os
from typing import Any

from xfed.operators.context import OperatorContext

HELLO, PARAMS, PREFLIGHT, PLAN = "hcg.hello", "hcg.params", "hcg.preflight", "hcg.plan"

# Loading a 6B model from a slow disk can take minutes; a dead party is caught sooner by the
# scheduler's heartbeats, which fail the job (Comm's waits then end) — this is only the last resort.
DEFAULT_TIMEOUT_S = float(os.environ.get("XFED_PREFLIGHT_TIMEOUT", "1800"))


def recv_meta(ctx: OperatorContext, peer: str, tag: str, timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """The meta of the next `tag` message from `peer` (ChannelTimeout names the peer)."""
    return dict(ctx.comm.recv(peer, tag, timeout=timeout).meta or {})


def gather_meta(ctx: OperatorContext, peers: list[str], tag: str, timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, dict[str, Any]]:
    """`tag` meta from every peer; ChannelTimeout names the peers that did not answer."""
    return {peer: dict(msg.meta or {}) for peer, msg in ctx.comm.gather(peers, tag, timeout=timeout).items()}


def send_meta(ctx: OperatorContext, peer: str, tag: str, meta: dict[str, Any]) -> None:
    ctx.comm.send(peer, tag, tensors=None, meta=meta)


def gather_messages(ctx: OperatorContext, peers: list[str], tag: str, timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """`tag` messages (meta and tensors) from every peer."""
    return dict(ctx.comm.gather(peers, tag, timeout=timeout))


def send_with_tensors(ctx: OperatorContext, peer: str, tag: str, meta: dict[str, Any], tensors: dict[str, Any]) -> None:
    ctx.comm.send(peer, tag, tensors=tensors, meta=meta)
