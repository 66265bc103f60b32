"""The operator's control messages between label trainers and the assist trainer (JSON meta only).

hello (trainer → assist: its own train_params, or why it could not read them) · params (assist →
trainer: the authoritative params and the conflicts found) · preflight (trainer → assist:
fingerprints, steps, examples) · plan (assist → trainer: ok + number of rounds, or the preflight
failure) · rejoin / replan (a restarted trainer asks for the plan; rejoin.py).
A model-free assist trainer (no training data: it never loads the base model) asks the first trainer,
in `params`, to attach its initial adapter tensors to `preflight`; it then broadcasts those.
Each message is a pydantic model: `send` writes its JSON, `recv`/`gather` read it back through the
model, so a malformed one is a FrameError naming the peer, never a KeyError later.
Every wait is bounded; Comm itself gives up early when the job is stopped or failed.
"""
from __future__ import annotations

import os
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from xfed.errors import FrameError, blaming
from xfed.operators.context import OperatorContext

# Loading a 6B model from a slow disk can take minutes; a dead party is caught sooner by the
# scheduler's heartbeats, which fail the job (Comm's waits then end) — this is only the last resort.
DEFAULT_TIMEOUT_S = float(os.environ.get("XFED_PREFLIGHT_TIMEOUT", "1800"))


class Control(BaseModel):
    """A control message; `tag` is its Comm tag."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    tag: ClassVar[str]


class Hello(Control):
    tag = "hcg.hello"
    train_params: dict[str, Any] = Field(default_factory=dict)  # the keys this party set (validated partial)
    error: str | None = None                                    # it could not read its own train_params


class ParamsReply(Control):
    tag = "hcg.params"
    ok: bool = True
    train_params: dict[str, Any] = Field(default_factory=dict)  # the effective (merged) train_params
    conflicts: list[str] = Field(default_factory=list)          # "key: assist=X party=Y"
    send_initial: bool = False                                  # attach the initial adapter to preflight
    error: str | None = None
    blame: str | None = None


class Preflight(Control):
    tag = "hcg.preflight"
    fingerprints: dict[str, Any] = Field(default_factory=dict)
    num_steps: int = Field(0, ge=0)
    num_examples: int = Field(0, ge=0)
    resume_round: int | None = Field(None, ge=0)  # a resumed attempt: this party's last complete round
    error: str | None = None                      # its set-up failed


class Plan(Control):
    tag = "hcg.plan"
    ok: bool
    rounds: int = Field(0, ge=0)
    warnings: list[str] = Field(default_factory=list)
    resume_from: int = Field(0, ge=0)
    error: str | None = None
    blame: str | None = None


class Rejoin(Control):
    tag = "hcg.rejoin"
    train_params: dict[str, Any] = Field(default_factory=dict)
    incarnation: int = Field(ge=1)


class Replan(Control):
    tag = "hcg.replan"
    ok: bool
    train_params: dict[str, Any] = Field(default_factory=dict)
    rounds: int = Field(0, ge=0)
    conflicts: list[str] = Field(default_factory=list)
    error: str | None = None


M = TypeVar("M", bound=Control)


def parse(kind: type[M], peer: str, meta: dict[str, Any] | None) -> M:
    """The message `peer` sent as `kind`; FrameError naming the peer and the first problem."""
    try:
        return kind.model_validate(meta or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise blaming(FrameError(f"{peer}: malformed {kind.tag} message: {loc + ': ' if loc else ''}{first['msg']}"),
                      peer) from None


def send(ctx: OperatorContext, peer: str, message: Control, tensors: dict[str, Any] | None = None) -> None:
    ctx.comm.send(peer, message.tag, tensors=tensors, meta=message.model_dump(mode="json", exclude_none=True))


def recv(ctx: OperatorContext, peer: str, kind: type[M], timeout: float = DEFAULT_TIMEOUT_S) -> M:
    """The next `kind` message from `peer` (ChannelTimeout names the peer)."""
    return parse(kind, peer, ctx.comm.recv(peer, kind.tag, timeout=timeout).meta)


def gather(ctx: OperatorContext, peers: list[str], kind: type[M], timeout: float = DEFAULT_TIMEOUT_S
           ) -> dict[str, tuple[M, dict[str, Any]]]:
    """{peer: (message, tensors)} from every peer; ChannelTimeout names the peers that did not answer."""
    got = ctx.comm.gather(peers, kind.tag, timeout=timeout)
    return {peer: (parse(kind, peer, msg.meta), msg.tensors) for peer, msg in got.items()}
