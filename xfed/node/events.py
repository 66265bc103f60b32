"""Node -> scheduler events of one job (status, progress, metrics, log, warning, error, done)."""
from __future__ import annotations

import logging
import math
import time
from typing import Any

from xfed.broker.retry import retry_until_deadline
from xfed.broker.streams import ControlStream
from xfed.errors import BrokerError, FrameError

log = logging.getLogger(__name__)

REPORT_KINDS = ("progress", "metrics", "log", "warning")
OUTCOME_RETRY_S = 60.0


def _jsonable(value: Any, depth: int = 0) -> Any:
    """Make operator-supplied data JSON-safe (numpy scalars, NaN, tuples) without ever failing."""
    if depth > 8:
        return str(value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value]
    item = getattr(value, "item", None)  # numpy scalar / 0-d array / torch scalar
    if callable(item):
        try:
            return _jsonable(item(), depth + 1)
        except (TypeError, ValueError):
            pass
    return str(value)


class EventReporter:
    """Appends this node's events for (job, stage, attempt) to the job's event stream.

    With `identity_key` (fed_conf.json pins identities) every event carries the node's signature
    (`xfed.security.events`), so the scheduler can tell it from one another node forged."""

    def __init__(self, r, keys, job_id: str, node_id: str, stage_id: int, attempt: int = 0, *,
                 identity_key: Any = None, incarnation: int = 0) -> None:
        # > 0: the node was restarted into this stage; the scheduler ignores older incarnations' events
        self.incarnation = int(incarnation)
        self.stream = ControlStream(r, keys.job_events(job_id), maxlen=100_000, owner=keys.job(job_id))
        self.job_id, self.node_id, self.stage_id, self.attempt = str(job_id), node_id, int(stage_id), int(attempt)
        self.namespace, self.identity_key = keys.namespace, identity_key

    def emit(self, kind: str, *, retry_s: float = 0.0, **fields: Any) -> None:
        """Append one event; with retry_s, keep trying through a Redis outage that long."""
        msg = {"type": kind, "job": self.job_id, "node": self.node_id, "stage": self.stage_id,
               "attempt": self.attempt, "ts": time.time()}
        if self.incarnation:
            msg["incarnation"] = self.incarnation
        msg.update(_jsonable(fields))
        if self.identity_key is not None:
            from xfed.security.events import sign_event

            msg["sig"] = sign_event(self.identity_key, self.namespace, msg)
        retry_until_deadline(lambda: self.stream.add(msg), seconds=retry_s, transient=(BrokerError,),
                             first_delay=0.5, max_delay=0.5)

    def report(self, kind: str, data: dict[str, Any]) -> None:
        """StageContext.report: progress | metrics | log | warning (never raises for a lost event)."""
        if kind not in REPORT_KINDS:
            raise ValueError(f"report kind must be one of {REPORT_KINDS}, got {kind!r}")
        try:
            self.emit(kind, data=data if isinstance(data, dict) else {"value": data})
        except (BrokerError, FrameError) as err:
            log.warning("could not report %s event: %s", kind, err)

    def status(self, state: str, **fields: Any) -> None:
        self.emit("status", state=state, **fields)

    def error(self, message: str, **fields: Any) -> None:
        self.emit("error", message=message[:4000], retry_s=OUTCOME_RETRY_S, **fields)

    def done(self, n_stages: int, result: dict[str, Any] | None = None) -> None:
        # a stage's outcome must survive a Redis outage at the wrong moment
        self.emit("done", n_stages=int(n_stages), result=result or {}, retry_s=OUTCOME_RETRY_S)
