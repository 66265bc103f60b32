"""The scheduler loop: requests in, stage commands out, node events and heartbeats watched.

All state lives in Redis (job hashes, event streams with a stored cursor, command streams), so a
restarted scheduler re-attaches to whatever is running (up to
`max_concurrent_jobs` jobs at once, each tracked on its own). One loop, no threads besides the heartbeat.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from xfed.broker.heartbeat import Heartbeat, alive_nodes
from xfed.broker.jobrecord import Job, JobState, NodeStatus
from xfed.broker.jobstore import JobStore
from xfed.broker.messages import NodeState, StageAction, job_event, stop_job_command
from xfed.broker.streams import ControlStream, Entry, read_many
from xfed.errors import BrokerError
from xfed.scheduler.client_requests import GROUP, RequestsMixin
from xfed.scheduler.dropouts import judge_dead, note_secagg, policy_of
from xfed.scheduler.event_checks import EventChecks
from xfed.scheduler.membership import MembershipMixin
from xfed.scheduler.progress import (
    after_end_status,
    decide_after_stage,
    done_problem,
    event_time,
    failure_of,
    missing_nodes,
    plan_field,
)
from xfed.scheduler.rejoins import not_yet_admitted, rejoin_candidates, stale_incarnation
from xfed.scheduler.rollback import RollbackWatch

log = logging.getLogger("xfed.scheduler")

# what a node's `status` event says -> its state in the job (an unknown word leaves the state as it was)
REPORTED_STATES = {"starting": NodeState.RUNNING, "running": NodeState.RUNNING, "stopped": NodeState.STOPPED,
                   **{s.value: s for s in NodeState}}

SCHEDULER_ID = "scheduler"
# after a job ends, keep reading its events a little so the per-node table shows who stopped
LINGER_S = 10.0
RECONNECT_BACKOFF_CAP_S = 2.0  # xfed.broker.connection's retry backoff cap


class Scheduler(RequestsMixin, MembershipMixin):
    def __init__(self, *, fed: Any, r: Any, keys: Any, interval: float | None = None) -> None:
        self.fed, self.r, self.keys = fed, r, keys
        self.interval = float(interval or fed.heartbeat_interval)
        self.participants = list(fed.node_ids)
        self.max_jobs = fed.max_concurrent_jobs  # jobs RUNNING at once
        self.jobs = JobStore(r, keys)
        self.requests = ControlStream(r, keys.requests(), maxlen=10_000)
        self.hb = Heartbeat(r, keys, SCHEDULER_ID, "scheduler", interval=self.interval, key=keys.scheduler(),
                            config_dir=fed.config_dir, failover_s=fed.failover_window_s)
        self.cursors: dict[str, str] = {}          # job id -> last event id read
        self.lingering: dict[str, float] = {}      # finished job id -> stop reading at (monotonic)
        self.shutdown = threading.Event()
        self._last_liveness = 0.0
        self._liveness_grace_until = 0.0
        # highest job id issued or seen: a Redis that lost its data must not hand out an id again
        self._max_job_id = 0
        self.event_checks = EventChecks(fed, keys.namespace)  # signatures, when identities are pinned
        self.watch = RollbackWatch(self)  # jobs a Redis failover rolled back, or that went silent

    # -- lifecycle ------------------------------------------------------------------------------
    def run(self) -> int:
        self.hb.on_lost = self.shutdown.set  # another scheduler took over while this one was frozen
        self.hb.start()  # atomic lease: one scheduler per namespace (waits out a dead one's TTL + 1 s)
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
                    # no liveness verdict until Redis is back and the grace below has passed: a step that
                    # succeeds right after an outage must not judge heartbeats that lapsed during it
                    self._liveness_grace_until = float("inf")
                    if down_since is None:
                        down_since = time.monotonic()
                        log.warning("broker problem, retrying: %s", err)
                    self.shutdown.wait(0.5)
                except Exception:  # noqa: BLE001 - one bad record or job must never end the scheduler
                    log.exception("scheduler step failed (carrying on)")
                    self.shutdown.wait(0.5)
        finally:
            self.hb.stop()
            log.info("scheduler stopped")
        return 0

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
                self.watch.heard(job_id)
                try:
                    self._process_events(job_id, entries)
                except BrokerError:
                    raise
                except Exception as err:  # noqa: BLE001 - a bug must fail one job, not the scheduler
                    log.exception("job %s: processing events failed", job_id)
                    try:
                        self._finish(job_id, JobState.FAILED, f"scheduler error: {type(err).__name__}: {err}", "")
                    except BrokerError:
                        raise
                    except Exception:  # noqa: BLE001 - not even failing it works: stop tracking it
                        log.exception("job %s: cannot fail it either; no longer tracking it", job_id)
                        self._forget(job_id)
        now = time.monotonic()
        if now - began > max(self.interval, 1.0):  # a normal step blocks <= 0.1 s
            # a Redis blip absorbed by the client's retries: same grace as an outage
            self._liveness_grace_until = now + self._grace_s()
        for job_id, until in list(self.lingering.items()):
            if now > until:
                self._forget(job_id)
        if now - self._last_liveness >= self.interval / 4:
            self._last_liveness = now
            self._check_liveness()
        self.watch.check(now)

    def _forget(self, job_id: str) -> None:
        """Stop reading a job's events (ended and lingered, vanished, or unreadable)."""
        self.lingering.pop(job_id, None)
        self.cursors.pop(job_id, None)
        self.event_checks.forget(job_id)

    # -- stages ---------------------------------------------------------------------------------
    def _dispatch(self, job_id: str, stage: int, attempt: int, participants: list[str]) -> None:
        if not self.jobs.transition(job_id, JobState.RUNNING, stage=stage, attempt=attempt):
            return
        for n in participants:
            self.jobs.set_node(job_id, n, NodeStatus(state=NodeState.DISPATCHED, stage=stage))
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
        decision = decide_after_stage(job.stage, job.participants, job.nodes, optional=not_yet_admitted(job))
        if decision.action is StageAction.NEXT:
            log.info("job %s: stage %s done, dispatching stage %s", job_id, job.stage, decision.stage)
            self._dispatch(job_id, decision.stage, job.attempt, job.participants)
        elif decision.action is StageAction.SUCCESS:
            n_stages = job.stage + 1
            # when the last node finished, not when this scheduler (maybe re-attached later) saw it
            finished = [s.finished for n, s in job.nodes.items() if n in job.participants and s.finished]
            ended = {"ended": repr(max(finished))} if finished else {}
            self._finish(job_id, JobState.SUCCESSFUL, "", "", n_stages=n_stages, **ended)
        elif decision.action is StageAction.FAIL:
            self._finish(job_id, JobState.FAILED, decision.reason, decision.node)

    def _finish(self, job_id: str, state: JobState, reason: str, node: str, **fields: Any) -> bool:
        job = self.jobs.get(job_id)
        if job is None or not self.jobs.transition(job_id, state, reason=reason, node=node, **fields):
            return False
        log.info("job %s %s%s", job_id, state.value, f": {reason}" if reason else "")
        try:
            snapshot = self.jobs.get(job_id)  # to write it back should a failover lose it (rollback.py)
        except BrokerError:
            snapshot = None
        self.watch.ended_as(job_id, state, reason, node, snapshot=snapshot)
        if state is not JobState.SUCCESSFUL:
            for n in job.participants:
                try:
                    ControlStream(self.r, self.keys.node_cmd(n), maxlen=1000).add(
                        stop_job_command(job_id, f"job {state.value}" + (f": {reason}" if reason else "")))
                except BrokerError as err:
                    log.warning("could not send stop to %s: %s", n, err)
        self._job_event(job_id, state, job.stage, reason=reason, node=node)
        self.jobs.expire(job_id)
        self.lingering[job_id] = time.monotonic() + LINGER_S
        return True

    def _job_event(self, job_id: str, state: JobState, stage: int, **fields: Any) -> None:
        ControlStream(self.r, self.keys.job_events(job_id), maxlen=100_000, owner=self.keys.job(job_id)).add(
            job_event(job_id, state.value, stage, **fields))

    # -- events ---------------------------------------------------------------------------------
    def _process_events(self, job_id: str, entries: list[Entry]) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.state is JobState.CORRUPT:
            # the record vanished (Redis lost its data) or became unreadable: nothing to update, and
            # writing would re-create a hash without state; the nodes see it and stop by themselves
            log.warning("job %s: %s; no longer tracking it", job_id,
                        job.reason if job else "its record is gone from Redis (data lost or expired)")
            self._forget(job_id)
            return
        changed = False
        for entry in entries:
            self.cursors[job_id] = entry.id
            problem = entry.msg and self.event_checks.problem(job_id, entry.msg)
            if problem:  # another node (or anyone able to append) writing in a pinned node's name
                log.warning("job %s: event %s ignored: %s", job_id, entry.id, problem)
                continue
            if job.state.terminal:
                noted = after_end_status(job, entry.msg)  # who stopped (for `status`), nothing else
                if noted is not None:
                    self.jobs.set_node(job.job_id, entry.msg["node"], noted)
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
        if stale_incarnation(job, msg):
            return False  # a stage process that a rejoin of its node superseded
        status = job.nodes.setdefault(node, NodeStatus())
        if status.state is NodeState.DROPPED and kind in ("status", "progress", "error", "done"):
            return False  # a dropped node's stage process is out of this stage (a restart may rejoin it)
        if kind == "error" and msg.get("lost") is True:
            verdict = judge_dead(job, policy_of(job), [node], self.interval,
                                 why="its daemon restarted and lost the stage process")
            if verdict is not None and verdict.action == "tolerate":
                self._tolerate(job.job_id, job, verdict)
                return True
        status.stage = job.stage
        if kind == "status":
            status.state = REPORTED_STATES.get(msg["state"], status.state)
            if isinstance(msg.get("pid"), int):
                status.pid = msg["pid"]
        elif kind == "progress":
            status.progress = msg["data"]
            if status.state in (NodeState.DISPATCHED, NodeState.PENDING):
                status.state = NodeState.RUNNING
            rounds, field = msg["data"].get("rounds"), plan_field(job.stage, job.attempt)
            if isinstance(rounds, int) and not isinstance(rounds, bool) and field not in job.extra:
                # the first announced plan is what every done of this stage must prove it completed
                self.jobs.set_fields(job.job_id, **{field: str(rounds)})
                job.extra[field] = str(rounds)
        elif kind == "error":
            status.state, status.message = NodeState.FAILED, msg["message"]
            self.jobs.set_node(job.job_id, node, status)
            blamed, reason = failure_of(msg, job.participants)
            self._finish(job.job_id, JobState.FAILED, reason, blamed, ended=repr(event_time(msg)))
            return True
        elif kind == "done":
            planned = job.extra.get(plan_field(job.stage, job.attempt))
            problem = done_problem(msg.get("result"), int(planned) if planned and planned.isdigit() else None)
            if problem:  # not the end of this stage: forged, or an operator that ended early
                self._finish(job.job_id, JobState.FAILED, f"{node}: done event without evidence that stage "
                             f"{job.stage} completed: {problem} (forged? pin identities in fed_conf.json so "
                             f"events are signed)", node)
                return True
            status.state, status.n_stages = NodeState.DONE, msg["n_stages"]
            status.finished = event_time(msg)
            result = msg.get("result")
            status.result = result if isinstance(result, dict) else None
            self.jobs.set_node(job.job_id, node, status)
            return True
        elif kind == "metrics":  # clients read metrics from the stream; a dropout policy/round record is kept
            note_secagg(self.jobs, job, msg.get("data"))
            self._note_admission(job, msg.get("data"))
            return False
        else:  # log / warning: clients read them from the stream
            return False
        self.jobs.set_node(job.job_id, node, status)
        return False

    # -- liveness -------------------------------------------------------------------------------
    def _check_liveness(self) -> None:
        running = [j for j in self.cursors if j not in self.lingering]
        if not running or time.monotonic() < self._liveness_grace_until:
            return
        alive = alive_nodes(self.r, self.keys, self.participants)
        for job_id in running:
            job = self.jobs.get(job_id)
            if job is None or job.state is JobState.CORRUPT:
                self._forget(job_id)  # vanished or unreadable: nothing to fail (see _process_events)
                continue
            if not job.active:
                continue
            for node in rejoin_candidates(job, policy_of(job), alive):
                self._rejoin(job, node)
            dead = missing_nodes(job.participants, alive)
            # judge_dead words the reason as "none for 3 x interval s": give it the lease's real TTL
            verdict = judge_dead(job, policy_of(job), dead, self.hb.ttl_ms / 3000) if dead else None
            if verdict is None:
                continue
            if verdict.action == "tolerate":
                self._tolerate(job_id, job, verdict)
                self._advance_if_ready(job_id)  # the others may all be done already
                continue
            self.jobs.set_node(job_id, verdict.node, NodeStatus(state=NodeState.FAILED, stage=job.stage,
                                                                message="heartbeat expired"))
            self._finish(job_id, JobState.FAILED, verdict.reason, verdict.node)
