"""The scheduler's side of client requests (`-c start [--resume JOB]`, `-c stop [JOB]`): each is
acted on once and answered on the request's own reply key.

Mixed into xfed.scheduler.core.Scheduler (it uses the scheduler's job store, participants and stage
dispatch); the capacity and stop-target rules are pure functions in xfed.scheduler.capacity.
"""
from __future__ import annotations

import logging
from typing import Any

from xfed.broker.attempts import with_ended_attempt
from xfed.broker.heartbeat import alive_nodes
from xfed.broker.jobrecord import JobState, NodeStatus, can_resume
from xfed.broker.messages import NodeState
from xfed.broker.requests import send_reply
from xfed.broker.streams import ControlStream, Entry
from xfed.errors import BrokerError, XfedError
from xfed.scheduler.capacity import capacity_refusal, only_active_job
from xfed.scheduler.progress import missing_nodes

log = logging.getLogger("xfed.scheduler")

GROUP = "scheduler"  # the scheduler's consumer group on the request stream


class RequestsMixin:
    jobs: Any
    r: Any
    keys: Any
    requests: ControlStream
    participants: list[str]
    max_jobs: int
    lingering: dict[str, float]
    cursors: dict[str, str]
    _max_job_id: int

    def _handle_request(self, entry: Entry) -> None:
        try:
            if entry.error:
                log.warning("ignoring malformed request: %s", entry.error)
                return
            msg = entry.msg
            try:
                self.keys.reply(msg["request_id"])
            except XfedError:  # no way to answer it: do not act on it either (the sender learns nothing)
                log.warning("ignoring %s request: request id %r is not usable as a key", msg["type"],
                            str(msg["request_id"])[:80])
                return
            try:
                reply = self._start(msg) if msg["type"] == "start" else self._stop(msg)
            except BrokerError:
                raise
            except XfedError as err:
                reply = {"ok": False, "error": str(err)}
            except Exception as err:  # noqa: BLE001 - answer the client instead of dying
                log.exception("request %s failed", entry.id)
                reply = {"ok": False, "error": f"scheduler error: {type(err).__name__}: {err}"}
            self._reply(msg["request_id"], reply)
        finally:
            self.requests.ack(GROUP, entry.id)

    def _reply(self, request_id: str, reply: dict) -> None:
        try:
            self.keys.reply(request_id)
        except XfedError:
            log.warning("request id %r is not usable as a key; no reply sent", request_id[:80])
            return
        send_reply(self.r, self.keys, request_id, reply)

    def _start(self, msg: dict) -> dict:
        refusal = capacity_refusal(self.jobs.active(), self.max_jobs)
        if refusal:
            return {"ok": False, "error": refusal}
        missing = missing_nodes(self.participants, alive_nodes(self.r, self.keys, self.participants))
        if missing:
            return {"ok": False, "missing": missing,
                    "error": f"cannot start: node(s) not alive (no heartbeat): {', '.join(missing)}"}
        if msg.get("resume") is not None:
            return self._resume(str(msg["resume"]))
        job_id = self.jobs.create(self.participants, extra={"cursor": "0-0"}, above=self._max_job_id)
        self._max_job_id = max(self._max_job_id, int(job_id))
        self.lingering.pop(job_id, None)  # an id reused after Redis lost its data
        self.cursors[job_id] = "0-0"
        self._dispatch(job_id, 0, 0, self.participants)
        log.info("job %s started on %s", job_id, ", ".join(self.participants))
        return {"ok": True, "job": job_id}

    def _resume(self, job_id: str) -> dict:
        """A FAILED/STOPPED job runs again from the stage it ended in, as attempt + 1.

        Earlier stages are not re-run. The operator sees `ctx.attempt` and picks up its own
        checkpoints (for horizontal_chatglm: the last aggregated adapter); mailboxes and pad
        streams are per attempt, so nothing of the failed attempt is reused."""
        job = self.jobs.require(job_id)
        if not can_resume(job.state):
            return {"ok": False, "error": f"job {job_id} is {job.state.value}; only FAILED or STOPPED jobs "
                                         f"can be resumed"}
        if sorted(job.participants) != sorted(self.participants):
            return {"ok": False, "error": f"job {job_id} ran on {', '.join(job.participants)}; fed_conf.json now "
                                         f"lists {', '.join(self.participants)}"}
        stage, attempt = max(job.stage, 0), job.attempt + 1
        if not self.jobs.resume(job_id, stage=stage, attempt=attempt):
            return {"ok": False, "error": f"job {job_id} changed state meanwhile; try again"}
        self.jobs.set_fields(job_id, attempts=with_ended_attempt(job))  # why earlier attempts ended, for status
        self.lingering.pop(job_id, None)
        self.cursors[job_id] = ControlStream(self.r, self.keys.job_events(job_id)).last_id()
        self.jobs.set_fields(job_id, cursor=self.cursors[job_id])
        for n in job.participants:
            self.jobs.set_node(job_id, n, NodeStatus(state=NodeState.DISPATCHED, stage=stage))
        self._send_stage(job_id, stage, attempt, job.participants)
        log.info("job %s resumed at stage %s (attempt %s)", job_id, stage, attempt)
        return {"ok": True, "job": job_id, "stage": stage, "attempt": attempt}

    def _stop(self, msg: dict) -> dict:
        job_id = msg.get("job")
        if job_id is None:
            job_id = only_active_job(self.jobs.active())  # JobError naming them when several run
        job = self.jobs.require(str(job_id))
        if not job.active:
            return {"ok": False, "error": f"job {job.job_id} already ended {job.state.value}"}
        self._finish(job.job_id, JobState.STOPPED, "stopped by client request", "")
        return {"ok": True, "job": job.job_id, "state": JobState.STOPPED.value}
