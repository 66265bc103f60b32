"""What travels on the control streams and in frame headers, as pydantic models; the states they name.

A stream message is one of `Message` (a union discriminated by `type`); extra fields are allowed
(forward compatible), every declared one is strictly typed (a JSON true is never a stage or a
timestamp), ids match `xfed.ids.ID_PATTERN` because they end up in key names. Frame headers are
`WireHeader`, with exactly the fields the wire format has. Validation errors come back as one
line naming the message type and field.
"""
from __future__ import annotations

import time
from enum import Enum
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, Strict, TypeAdapter, ValidationError

from xfed.ids import ID_PATTERN

# one size limit per purpose
MAX_STREAM_MESSAGE_BYTES = 256 * 1024   # a request, a node command or a job event
MAX_FRAME_HEADER_BYTES = 1 << 20        # a data-plane frame's JSON header, meta included

Id = Annotated[str, Strict(), Field(pattern=ID_PATTERN)]
Index = Annotated[int, Strict(), Field(ge=0, lt=2**31)]  # a stage or attempt number
Text = Annotated[str, Strict()]
Number = Annotated[float, Strict()]


class NodeState(str, Enum):
    """A node's state within a job (`status` events, the job hash's `node:<id>` fields)."""

    PENDING = "pending"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"
    DROPPED = "dropped"     # left a stage that tolerates dropouts (xfed.scheduler.dropouts)


class StageAction(str, Enum):
    """What the scheduler does once node statuses change during a stage."""

    WAIT = "wait"
    NEXT = "next"
    SUCCESS = "success"
    FAIL = "fail"


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


# client -> scheduler (requests stream)
class StartRequest(_Message):
    type: Literal["start"]
    request_id: Text
    resume: Id | None = None


class StopRequest(_Message):
    type: Literal["stop"]
    request_id: Text
    job: Id | None = None


# scheduler -> node (node command stream)
class RunStage(_Message):
    type: Literal["run_stage"]
    job: Id
    stage: Index
    attempt: Index
    participants: Annotated[list, Strict()]


class StopJob(_Message):
    type: Literal["stop_job"]
    job: Id
    reason: Text


# node -> scheduler/client (job events stream)
class _NodeEvent(_Message):
    job: Id
    node: Id | Literal[""]  # a job event may name no node
    stage: Index
    ts: Number
    attempt: Index | None = None


class StatusEvent(_NodeEvent):
    type: Literal["status"]
    state: Text


class ReportEvent(_NodeEvent):
    type: Literal["progress", "metrics", "log", "warning"]
    data: Annotated[dict, Strict()]


class ErrorEvent(_NodeEvent):
    type: Literal["error"]
    message: Text


class DoneEvent(_NodeEvent):
    type: Literal["done"]
    n_stages: Annotated[int, Strict()]


# scheduler/client -> client (job events stream): the job's own state changes
class JobEvent(_Message):
    type: Literal["job"]
    job: Id
    state: Text
    stage: Index
    ts: Number
    node: Id | Literal[""] | None = None


Message = Annotated[Union[StartRequest, StopRequest, RunStage, StopJob, StatusEvent, ReportEvent, ErrorEvent,
                          DoneEvent, JobEvent], Field(discriminator="type")]
MESSAGE = TypeAdapter(Message)
MESSAGE_TYPES = ("start", "stop", "run_stage", "stop_job", "status", "progress", "metrics", "log", "warning",
                 "error", "done", "job")


class WireHeader(BaseModel):
    """A frame's JSON header: exactly these fields (see xfed.broker.frames)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1]
    kind: Literal["tensors", "control"]
    sender: Id
    receiver: Id
    job: Id
    stage: Annotated[int, Strict(), Field(ge=0, lt=1 << 53)]
    attempt: Annotated[int, Strict(), Field(ge=0, lt=1 << 53)]
    channel: Annotated[str, Strict(), Field(pattern=r"^[\x21-\x7e]{1,128}$")]  # printable ASCII, no spaces
    seq: Annotated[int, Strict(), Field(ge=0, lt=1 << 53)]
    meta: Annotated[dict, Strict()]
    payload_bytes: Annotated[int, Strict(), Field(ge=0, lt=1 << 53)]


WIRE_HEADER_FIELDS = frozenset(WireHeader.model_fields)


def explain(err: ValidationError, data: dict[str, Any], what: str) -> str:
    """The first problem of a stream message's validation error as one line: `what: type.field ...`."""
    e = err.errors(include_url=False)[0]
    kind = data.get("type")
    loc = [p for p in e["loc"] if isinstance(p, str) and p != kind]
    name = loc[0] if loc else ""
    prefix = f"{what}: {kind}.{name}"
    value = data.get(name)
    typ = e["type"]
    if typ in ("union_tag_invalid", "union_tag_not_found"):
        return f"{what}: unknown control message type {str(kind)[:40]!r}"
    if typ == "missing":
        return f"{what}: {kind} message lacks field {name!r}"
    if typ == "string_pattern_mismatch":
        return f"{prefix} is not a valid id: {str(value)[:40]!r}"
    if typ in ("greater_than_equal", "less_than", "greater_than", "less_than_equal"):
        return f"{prefix} out of range: {str(value)[:30]}"
    if typ.endswith("_type") or typ in ("literal_error", "model_type", "dict_type"):
        expected = e["msg"].removeprefix("Input should be ")
        return f"{prefix} has type {type(value).__name__}, expected {expected}"[:200]
    return f"{prefix}: {e['msg']}"[:200]


def validate_message(msg: Any, *, where: str = "message") -> Message:
    """The typed message; FrameError naming `where`, the type and the field otherwise."""
    from xfed.errors import FrameError

    if not isinstance(msg, dict):
        raise FrameError(f"{where}: control message must be a JSON object, got {type(msg).__name__}")
    if not isinstance(msg.get("type"), str) or msg["type"] not in MESSAGE_TYPES:
        raise FrameError(f"{where}: unknown control message type {str(msg.get('type'))[:40]!r}")
    try:
        return MESSAGE.validate_python(msg)
    except ValidationError as err:
        raise FrameError(explain(err, msg, where)) from None


# --- the messages more than one process builds ----------------------------------------------------------
def stop_job_command(job_id: str, reason: str) -> dict[str, Any]:
    """The node command that stops a job's stage on one node."""
    return {"type": "stop_job", "job": job_id, "reason": reason, "ts": time.time()}


def job_event(job_id: str, state: str, stage: int, **fields: Any) -> dict[str, Any]:
    """A job's own state change, on its events stream."""
    return {"type": "job", "job": job_id, "state": state, "stage": stage, "ts": time.time(), **fields}
