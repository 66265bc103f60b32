"""The scheduler loop: requests in, stage commands out, node events and heartbeats watched.

All state lives in Redis (job hashes, event streams with a stored cursor, command streams), so a
restarted scheduler re-attaches to whatever is running. One loop, no threads besides the heartbeat.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from xfed.broker.heartbeat import Heartbeat, alive_nodes, wait_until_free
from xfed.broker.jobstore import Job, JobState, JobStore, NodeStatus, can_resume
from xfed.broker.streams import ControlStream, Entry, read_many
from xfed.errors import BrokerError, XfedError
from xfed.scheduler.dropouts import DROPPED, judge_dead, note_secagg, policy_of
from xfed.scheduler.progress import decide_after_stage, missing_nodes
from xfed.scheduler.resume import with_ended_attempt

log = logging.getLogger("xfed.scheduler")

GROUP = "scheduler"
SCHEDULER_ID = "scheduler"
REPLY_TTL_S = 60
# after a job ends, keep reading its events a little so the per-node table shows who stopped
LINGER_S = 10.0
RECONNECT_BACKOFF_CAP_S = 2.0  # xfed.broker.connection's retry backoff cap


class Scheduler:
    def __init__(self, *, fed: Any, r: Any, keys: Any, interval: float | None = None) -> None:
        self.fed, self.r, self.keys = fed, r, keys
        self.interval = float(interval or getattr(fed, "heartbeat_interval", 2.0) or 2.0)
        self.participants = list(fed.node_ids)
        self.jobs = JobStore(r, keys)
        self.requests = ControlStream(r, keys.requests(), maxlen=10_000)
        self.hb = Heartbeat(r, keys, SCHEDULER_ID, "scheduler", interval=self.interval, key=keys.scheduler(),
                            config_dir=getattr(fed, "config_dir", None))
        self.cursors: dict[str, str] = {}          # job id -> last event id read
        self.lingering: dict[str, float] = {}      # finished job id -> stop reading at (monotonic)
        self.shutdown = threading.Event()
        self._last_liveness = 0.0
        self._liveness_grace_until = 0.0
        # highest job id issued or seen: a Redis that lost its data must not hand out an id again
        self._max_job_id = 0
        self._event_checks: dict[str, Any] = {}   # job id -> EventVerifier | None (identities pinned?)

    # -- lifecycle ------------------------------------------------------------------------------
    def run(self) -> int:
        self._wait_for_previous_scheduler()
        self.hb.start()
        self.requests.ensure_group(GROUP)
        # a new scheduler cannot tell whether Redis was just away (heartbeat keys lapsed, nodes still
        # reconnecting): the same grace as after an outage before a missing heartbeat fails a job
        self._liveness_grace_until = time.monotonic() + self._grace_s()
        self.reattach()
        log.info("scheduler ready: participants %s, heartbeat %.2g s", ", ".join(self.participants), self.interval)
        down_since: float | None = None
        try:
            while not self.shutdown.is_set():
                try:
                    self.step()
                    if down_since is not None:
                        log.warning("Redis reachable again after %.1f s", time.monotonic() - down_since)
                        self.hb.beat(register=True)
                        self.requests.ensure_group(GROUP)
                        # heartbeat keys may have lapsed while Redis was away: let nodes beat again
                        # before treating a missing key as a dead node
                        self._liveness_grace_until = time.monotonic() + self._grace_s()
                        down_since = None
                except BrokerError as err:
                    if down_since is None:
                        down_since = time.monotonic()
                        log.warning("broker problem, retrying: %s", err)
                    self.shutdown.wait(0.5)
        finally:
            self.hb.stop()
            log.info("scheduler stopped")
        return 0

    def _wait_for_previous_scheduler(self) -> None:
        """Refuse to run beside a live scheduler; wait out the heartbeat TTL of a dead one."""
        wait_until_free(self.r, self.keys, SCHEDULER_ID, interval=self.interval, key=self.keys.scheduler())

    def _grace_s(self) -> float:
        """After Redis was away: two beats, plus the reconnect backoff of the nodes' clients (capped at 2 s)."""
        return 2 * self.interval + RECONNECT_BACKOFF_CAP_S + 0.5

    def reattach(self) -> None:
        ids = [int(j) for j in self.jobs.job_ids(limit=1) if j.isdigit()]
        self._max_job_id = max([self._max_job_id, *ids])
        for job in self.jobs.active():
            self.cursors[job.job_id] = job.extra.get("cursor") or "0-0"
            log.info("re-attached to job %s (%s, stage %s)", job.job_id, job.state.value, job.stage)
            if job.state is JobState.PENDING:  # we died between creating and dispatching it
                self._dispatch(job.job_id, 0, job.attempt, job.participants)
            else:
                self._advance_if_ready(job.job_id)

    def step(self) -> None:
        """One turn of the loop: requests, events, heartbeats."""
        began = time.monotonic()
        busy = any(j not in self.lingering for j in self.cursors)  # lingering jobs alone must not spin
        for entry in self.requests.read_group(GROUP, SCHEDULER_ID, block_ms=None if busy else 200, count=20):
            self._handle_request(entry)
        # one stream per XREAD (each job's keys share a hash tag, different jobs do not: Redis Cluster);
        # block only on an active job's stream, so request latency stays ~100 ms
        tracked = sorted(self.cursors, key=lambda j: j in self.lingering)
        for i, job_id in enumerate(tracked):
            key = self.keys.job_events(job_id)
            block = 100 if i == 0 and job_id not in self.lingering else None
            entries = read_many(self.r, {key: self.cursors[job_id]}, block_ms=block).get(key, [])
            if entries:
                try:
                    self._process_events(job_id, entries)
                except BrokerError:
                    raise
                except Exception as err:  # noqa: BLE001 - a bug must fail one job, not the scheduler
                    log.exception("job %s: processing events failed", job_id)
                    self._finish(job_id, JobState.FAILED, f"scheduler error: {type(err).__name__}: {err}", "")
        now = time.monotonic()
        if now - began > max(self.interval, 1.0):  # a normal step blocks <= 0.1 s
            # a Redis blip absorbed by the client's retries: same grace as an outage
            self._liveness_grace_until = now + self._grace_s()
        for job_id, until in list(self.lingering.items()):
            if now > until:
                self.lingering.pop(job_id, None)
                self.cursors.pop(job_id, None)
                self._event_checks.pop(job_id, None)
        if now - self._last_liveness >= self.interval / 4:
            self._last_liveness = now
            self._check_liveness()

    # -- requests -------------------------------------------------------------------------------
    def _handle_request(self, entry: Entry) -> None:
        try:
            if entry.error:
                log.warning("ignoring malformed request: %s", entry.error)
                return
            msg = entry.msg
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
            key = self.keys.reply(request_id)
        except XfedError:
            log.warning("request id %r is not usable as a key; no reply sent", request_id[:80])
            return
        pipe = self.r.pipeline(transaction=True)
        pipe.rpush(key, json.dumps(reply))
        pipe.expire(key, REPLY_TTL_S)
        pipe.execute()

    def _start(self, msg: dict) -> dict:
        for job in self.jobs.active():
            return {"ok": False, "error": f"job {job.job_id} is still {job.state.value}; wait for it or stop it "
                                         f"(-c stop {job.job_id})"}
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
            self.jobs.set_node(job_id, n, NodeStatus(state="dispatched", stage=stage))
        self._send_stage(job_id, stage, attempt, job.participants)
        log.info("job %s resumed at stage %s (attempt %s)", job_id, stage, attempt)
        return {"ok": True, "job": job_id, "stage": stage, "attempt": attempt}

    def _stop(self, msg: dict) -> dict:
        job_id = msg.get("job")
        if job_id is None:
            active = self.jobs.active()
            if not active:
                return {"ok": False, "error": "no job is running"}
            job_id = active[0].job_id
        job = self.jobs.require(str(job_id))
        if not job.active:
            return {"ok": False, "error": f"job {job.job_id} already ended {job.state.value}"}
        self._finish(job.job_id, JobState.STOPPED, "stopped by client request", "")
        return {"ok": True, "job": job.job_id, "state": JobState.STOPPED.value}

    # -- stages ---------------------------------------------------------------------------------
    def _dispatch(self, job_id: str, stage: int, attempt: int, participants: list[str]) -> None:
        if not self.jobs.transition(job_id, JobState.RUNNING, stage=stage, attempt=attempt):
            return
        for n in participants:
            self.jobs.set_node(job_id, n, NodeStatus(state="dispatched", stage=stage))
        self._send_stage(job_id, stage, attempt, participants)

    def _send_stage(self, job_id: str, stage: int, attempt: int, participants: list[str]) -> None:
        for n in participants:
            ControlStream(self.r, self.keys.node_cmd(n), maxlen=1000).add(
                {"type": "run_stage", "job": job_id, "stage": stage, "attempt": attempt,
                 "participants": participants, "ts": time.time()})
        self._job_event(job_id, JobState.RUNNING, stage, attempt=attempt)

    def _advance_if_ready(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.state is not JobState.RUNNING:
            return
        decision = decide_after_stage(job.stage, job.participants, job.nodes)
        if decision.action == "next":
            log.info("job %s: stage %s done, dispatching stage %s", job_id, job.stage, decision.stage)
            self._dispatch(job_id, decision.stage, job.attempt, job.participants)
        elif decision.action == "success":
            n_stages = job.stage + 1
            self._finish(job_id, JobState.SUCCESSFUL, "", "", n_stages=n_stages)
        elif decision.action == "fail":
            self._finish(job_id, JobState.FAILED, decision.reason, decision.node)

    def _finish(self, job_id: str, state: JobState, reason: str, node: str, **fields: Any) -> bool:
        job = self.jobs.get(job_id)
        if job is None or not self.jobs.transition(job_id, state, reason=reason, node=node, **fields):
            return False
        log.info("job %s %s%s", job_id, state.value, f": {reason}" if reason else "")
        if state is not JobState.SUCCESSFUL:
            for n in job.participants:
                try:
                    ControlStream(self.r, self.keys.node_cmd(n), maxlen=1000).add(
                        {"type": "stop_job", "job": job_id, "reason": f"job {state.value}"
                         + (f": {reason}" if reason else ""), "ts": time.time()})
                except BrokerError as err:
                    log.warning("could not send stop to %s: %s", n, err)
        self._job_event(job_id, state, job.stage, reason=reason, node=node)
        self.jobs.expire(job_id)
        self.lingering[job_id] = time.monotonic() + LINGER_S
        return True

    def _job_event(self, job_id: str, state: JobState, stage: int, **fields: Any) -> None:
        ControlStream(self.r, self.keys.job_events(job_id), maxlen=100_000).add(
            {"type": "job", "job": job_id, "state": state.value, "stage": stage, "ts": time.time(), **fields})

    # -- events ---------------------------------------------------------------------------------
    def _process_events(self, job_id: str, entries: list[Entry]) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            self.cursors.pop(job_id, None)
            return
        changed = False
        for entry in entries:
            self.cursors[job_id] = entry.id
            problem = entry.msg and self._forged(job_id, entry.msg)
            if problem:  # another node (or anyone able to append) writing in a pinned node's name
                log.warning("job %s: event %s ignored: %s", job_id, entry.id, problem)
                continue
            if job.state.terminal:
                self._note_after_end(job, entry)
                continue
            if entry.error:
                self._finish(job_id, JobState.FAILED, f"malformed event: {entry.error}", "")
                job = self.jobs.get(job_id) or job
                continue
            changed |= self._apply_event(job, entry.msg)
            if changed:
                job = self.jobs.get(job_id) or job
        self.jobs.set_fields(job_id, cursor=self.cursors[job_id])
        if changed:
            self._advance_if_ready(job_id)

    def _forged(self, job_id: str, msg: dict) -> str | None:
        """Why a node event must not be applied (identities pinned, signature missing or wrong), else None.

        fed_conf.json is read again for each job, as nodes read it at each stage start."""
        if msg["type"] == "job":
            return None  # the scheduler's own
        if job_id not in self._event_checks:
            from xfed.config import load_fed_conf
            from xfed.security.events import EventVerifier

            identities = getattr(self.fed, "identities", None) or {}
            config_dir = getattr(self.fed, "config_dir", None)
            if config_dir is not None:
                try:
                    identities = load_fed_conf(config_dir).identities
                except XfedError as err:
                    log.warning("job %s: fed_conf.json unreadable (%s); using identities read at start", job_id, err)
            self._event_checks[job_id] = EventVerifier(identities) if identities else None
        check = self._event_checks[job_id]
        return check.problem(self.keys.namespace, msg) if check else None

    def _apply_event(self, job: Job, msg: dict) -> bool:
        """Update the job from one node event; True when a stage may have completed or it failed."""
        kind, node = msg["type"], msg.get("node", "")
        if kind == "job":
            return False
        if node not in job.participants:
            log.warning("job %s: event from non-participant %r ignored", job.job_id, node)
            return False
        if msg.get("stage") != job.stage or msg.get("attempt", 0) != job.attempt:
            return False  # late event of an earlier stage/attempt
        status = job.nodes.setdefault(node, NodeStatus())
        if status.state == DROPPED and kind in ("status", "progress"):
            return False  # a dropped node stays dropped for this stage (rejoining is not supported yet)
        status.stage = job.stage
        if kind == "status":
            status.state = {"starting": "running", "running": "running", "stopped": "stopped"}.get(
                msg["state"], msg["state"])
            if isinstance(msg.get("pid"), int):
                status.pid = msg["pid"]
        elif kind == "progress":
            status.progress = msg["data"]
            if status.state in ("dispatched", "pending"):
                status.state = "running"
        elif kind == "error":
            status.state, status.message = "failed", msg["message"]
            self.jobs.set_node(job.job_id, node, status)
            message = msg["message"]
            reason = message if message.startswith(f"{node}:") else f"{node}: {message}"
            self._finish(job.job_id, JobState.FAILED, reason, node)
            return True
        elif kind == "done":
            status.state, status.n_stages = "done", msg["n_stages"]
            result = msg.get("result")
            status.result = result if isinstance(result, dict) else None
            self.jobs.set_node(job.job_id, node, status)
            return True
        elif kind == "metrics":  # clients read metrics from the stream; a dropout policy/round record is kept
            note_secagg(self.jobs, job, msg.get("data"))
            return False
        else:  # log / warning: clients read them from the stream
            return False
        self.jobs.set_node(job.job_id, node, status)
        return False

    def _note_after_end(self, job: Job, entry: Entry) -> None:
        """After the end, record who stopped (for `status`), but change nothing else."""
        msg = entry.msg
        if not msg or msg["type"] not in ("status", "error") or msg.get("node") not in job.participants:
            return
        status = job.nodes.get(msg["node"], NodeStatus())
        if status.state in ("done", "failed"):
            return
        status.state = "stopped" if msg["type"] == "error" or msg.get("state") == "stopped" else status.state
        self.jobs.set_node(job.job_id, msg["node"], status)

    # -- liveness -------------------------------------------------------------------------------
    def _check_liveness(self) -> None:
        running = [j for j in self.cursors if j not in self.lingering]
        if not running or time.monotonic() < self._liveness_grace_until:
            return
        alive = alive_nodes(self.r, self.keys, self.participants)
        for job_id in running:
            job = self.jobs.get(job_id)
            if job is None or not job.active:
                continue
            dead = missing_nodes(job.participants, alive)
            verdict = judge_dead(job, policy_of(job), dead, self.interval) if dead else None
            if verdict is None:
                continue
            if verdict.action == "tolerate":
                for n in verdict.dropped:
                    self.jobs.set_node(job_id, n, NodeStatus(state=DROPPED, stage=job.stage, message=verdict.reason))
                    log.warning("job %s: %s %s", job_id, n, verdict.reason)
                self._advance_if_ready(job_id)  # the others may all be done already
                continue
            self.jobs.set_node(job_id, verdict.node, NodeStatus(state="failed", stage=job.stage,
                                                                message="heartbeat expired"))
            self._finish(job_id, JobState.FAILED, verdict.reason, verdict.node)
