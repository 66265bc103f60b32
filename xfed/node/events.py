"""Node -> scheduler events of one job (status, progress, metrics, log, warning, error, done)."""
from __future__ import annotations

import logging
import math
import queue
import threading
import time
from typing import Any

from xfed.broker.retry import retry_until_deadline
from xfed.broker.streams import ControlStream
from xfed.errors import BrokerError, FrameError

log = logging.getLogger(__name__)

REPORT_KINDS = ("progress", "metrics", "log", "warning")
OUTCOME_RETRY_S = 60.0
QUEUE_MAX = 10_000  # background events waiting to be sent; beyond, new ones are dropped with a warning
FLUSH_S = 10.0      # how long an outcome waits for the queued events before it is sent anyway


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
    (`xfed.security.events`), so the scheduler can tell it from one another node forged.

    With `background` (a stage), `report` (progress, metrics, log, warning: best effort) only
    queues the event and a sender thread appends what is queued in one pipelined round trip, so a
    round never waits on them; an outcome (`status`, `error`, `done`) first lets the queue drain,
    so the stream keeps the order the events were made in."""

    def __init__(self, r, keys, job_id: str, node_id: str, stage_id: int, attempt: int = 0, *,
                 identity_key: Any = None, incarnation: int = 0, background: bool = False) -> None:
        # > 0: the node was restarted into this stage; the scheduler ignores older incarnations' events
        self.incarnation = int(incarnation)
        self.stream = ControlStream(r, keys.job_events(job_id), maxlen=100_000, owner=keys.job(job_id))
        self.job_id, self.node_id, self.stage_id, self.attempt = str(job_id), node_id, int(stage_id), int(attempt)
        self.namespace, self.identity_key = keys.namespace, identity_key
        self._queue: queue.Queue | None = queue.Queue(maxsize=QUEUE_MAX) if background else None
        self._sender: threading.Thread | None = None
        self._lock = threading.Lock()

    def _message(self, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        msg = {"type": kind, "job": self.job_id, "node": self.node_id, "stage": self.stage_id,
               "attempt": self.attempt, "ts": time.time()}
        if self.incarnation:
            msg["incarnation"] = self.incarnation
        msg.update(_jsonable(fields))
        if self.identity_key is not None:
            from xfed.security.events import sign_event

            msg["sig"] = sign_event(self.identity_key, self.namespace, msg)
        return msg

    def emit(self, kind: str, *, retry_s: float = 0.0, **fields: Any) -> None:
        """Append one event now (after what is queued); with retry_s, keep trying through a Redis outage that long."""
        msg = self._message(kind, fields)
        self.flush()
        retry_until_deadline(lambda: self.stream.add(msg), seconds=retry_s, transient=(BrokerError,),
                             first_delay=0.5, max_delay=0.5)

    def report(self, kind: str, data: dict[str, Any]) -> None:
        """StageContext.report: progress | metrics | log | warning (never raises for a lost event)."""
        if kind not in REPORT_KINDS:
            raise ValueError(f"report kind must be one of {REPORT_KINDS}, got {kind!r}")
        data = data if isinstance(data, dict) else {"value": data}
        if self._queue is None:
            try:
                self.emit(kind, data=data)
            except (BrokerError, FrameError) as err:
                log.warning("could not report %s event: %s", kind, err)
            return
        try:
            self._queue.put_nowait(self._message(kind, {"data": data}))
        except queue.Full:
            log.warning("could not report %s event: %d events wait to be sent", kind, QUEUE_MAX)
            return
        if self._sender is None:
            with self._lock:
                if self._sender is None:
                    self._sender = threading.Thread(target=self._send_queued, name="event-sender", daemon=True)
                    self._sender.start()

    def flush(self, timeout: float = FLUSH_S) -> bool:
        """Wait until every queued event is sent or given up (True), at most `timeout` seconds."""
        q = self._queue
        if q is None:
            return True
        with q.all_tasks_done:
            return q.all_tasks_done.wait_for(lambda: q.unfinished_tasks == 0, timeout)

    def _send_queued(self) -> None:
        assert self._queue is not None
        while True:
            batch = [self._queue.get()]
            while len(batch) < 100:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self.stream.add_many(batch)
            except (BrokerError, FrameError) as err:
                log.warning("could not report %d event(s): %s", len(batch), err)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def status(self, state: str, **fields: Any) -> None:
        self.emit("status", state=state, **fields)

    def error(self, message: str, **fields: Any) -> None:
        self.emit("error", message=message[:4000], retry_s=OUTCOME_RETRY_S, **fields)

    def done(self, n_stages: int, result: dict[str, Any] | None = None) -> None:
        # a stage's outcome must survive a Redis outage at the wrong moment
        self.emit("done", n_stages=int(n_stages), result=result or {}, retry_s=OUTCOME_RETRY_S)
