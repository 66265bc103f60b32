"""Node daemon (-t NODE / -a): waits for stage commands, runs each stage in a child, watches it.

One loop, no threads besides the heartbeat: read the node's command stream (consumer group, the
`run_stage` entry acked only once the stage is over), start/stop the children (one per job, at most
`max_concurrent_jobs`), poll them, and report a death that its child did not report for itself.
Redis outages are waited out with backoff; a bad job (bad config, crashing operator, malformed
messages) fails that job and the daemon takes the next.
"""
from __future__ import annotations

import hashlib
import logging
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from xfed.broker.heartbeat import Heartbeat
from xfed.broker.jobrecord import JobState
from xfed.broker.jobstore import JobStore
from xfed.broker.streams import ControlStream, Entry
from xfed.errors import BrokerError, XfedError
from xfed.node.child import SpareChild, StageChild, describe_exit
from xfed.node.events import EventReporter
from xfed.node.exit_codes import EXIT_DONE, EXIT_ERROR_REPORTED, EXIT_STOPPED
from xfed.node.pulse import FILE_NAME as PULSE_FILE
from xfed.node.pulse import StallWatch

log = logging.getLogger("xfed.node")

GROUP = "daemon"


def default_work_root(config_path: str | os.PathLike) -> Path:
    """Scratch space for stages (child logs, operator work dirs): $XFED_WORK_DIR, else one folder per config
    folder under the temp dir. Never inside the config folder: configs are often checked in (git)."""
    env = os.environ.get("XFED_WORK_DIR")
    if env:
        return Path(env)
    tag = hashlib.sha256(str(Path(config_path).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"xfed-{os.getuid()}-work-{tag}"


class NodeDaemon:
    """The long-running process of one party (label trainer or assist trainer)."""

    def __init__(self, *, config_path: str | os.PathLike, node_id: str, role: str, fed: Any, r: Any, keys: Any,
                 work_root: Path | None = None, stop_grace_s: float = 5.0, identity_key: Any = None) -> None:
        self.config_path = str(config_path)
        self.identity_key = identity_key  # signs the events this daemon reports (checked at start-up)
        self.node_id, self.role, self.fed, self.r, self.keys = node_id, role, fed, r, keys
        self.work_root = Path(work_root) if work_root else default_work_root(config_path)
        self.stop_grace_s = stop_grace_s
        self.interval = fed.heartbeat_interval
        self.cmds = ControlStream(r, keys.node_cmd(node_id), maxlen=1000)
        self.jobs = JobStore(r, keys)
        self.hb = Heartbeat(r, keys, node_id, role, interval=self.interval,
                            config_dir=Path(config_path).resolve(),
                            failover_s=fed.failover_window_s)
        # one stage process per job (job id -> child), at most max_concurrent_jobs (fed_conf.json) at once
        self.children: dict[str, StageChild] = {}
        self.max_jobs = fed.max_concurrent_jobs
        # a warm stage process (imports done) ready for the next stage; XFED_SPARE_CHILD=0 disables it
        self.use_spare = os.environ.get("XFED_SPARE_CHILD", "1") != "0"
        self.spare: SpareChild | None = None
        self._spare_retry_at = 0.0
        self.shutdown = threading.Event()
        self._outbox: list[tuple[EventReporter, str, dict]] = []
        self._deferred: list[tuple[str, dict]] = []   # run_stage commands waiting for a child to exit
        self._child_exited = False

    # -- lifecycle ------------------------------------------------------------------------------
    def run(self) -> int:
        # one process per node id: the heartbeat is an atomic lease (a twin waits out the TTL, then gives up)
        self.hb.on_lost = self._lease_lost
        self.hb.start()  # waits out a dead twin's lease (its TTL + 1 s)
        self._ensure_spare()  # warm up while idle, so even the first job starts without imports
        self.cmds.ensure_group(GROUP)
        self._recover_pending()
        log.info("%s %s ready (heartbeat every %.2g s, work dir %s)", self.role, self.node_id, self.interval,
                 self.work_root)
        down_since: float | None = None
        backoff = 0.1
        try:
            while not self.shutdown.is_set():
                try:
                    self._flush_outbox()
                    block = 100 if self.children else 500
                    for entry in self.cmds.read_group(GROUP, self.node_id, block_ms=block):
                        self._handle(entry)
                    self._watch_child()
                    self._run_deferred()
                    self._ensure_spare()
                    if down_since is not None:
                        log.warning("Redis reachable again after %.1f s", time.monotonic() - down_since)
                        self.hb.beat(register=True)
                        down_since, backoff = None, 0.1
                except BrokerError as err:
                    if down_since is None:
                        down_since = time.monotonic()
                        log.warning("broker problem, retrying: %s", err)
                    try:
                        self._watch_child(offline=True)
                    except BrokerError:
                        pass  # reported from the outbox once Redis is back
                    self.shutdown.wait(backoff)
                    backoff = min(backoff * 2, 2.0)
        finally:
            self._shutdown_children()
            if self.spare is not None:
                self.spare.discard()
            self.hb.stop()
            log.info("%s %s stopped", self.role, self.node_id)
        return 0

    def _lease_lost(self) -> None:
        log.error("%s: another process now runs as %s; stopping this one (and its stage process)",
                  self.node_id, self.node_id)
        self.shutdown.set()

    def request_shutdown(self, *_: Any) -> None:
        self.shutdown.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_shutdown)
        signal.signal(signal.SIGINT, self.request_shutdown)

    # -- commands -------------------------------------------------------------------------------
    def _recover_pending(self) -> None:
        """Commands delivered to a previous incarnation of this daemon and never acked."""
        for entry in self.cmds.read_group(GROUP, self.node_id, pending=True, count=1000):
            msg = entry.msg or {}
            if msg.get("type") == "run_stage":
                job = self.jobs.get(msg["job"])
                if job is not None and job.state is JobState.RUNNING and job.stage == msg["stage"]:
                    # `lost`: a stage that tolerates dropouts counts this node as dropped (it may rejoin)
                    self._reporter(msg["job"], msg["stage"], msg["attempt"], msg.get("incarnation", 0)).error(
                        f"{self.node_id}: daemon restarted during stage {msg['stage']}; its stage process was lost",
                        lost=True)
            self.cmds.ack(GROUP, entry.id)

    def _handle(self, entry: Entry) -> None:
        if entry.error:
            log.warning("ignoring malformed command: %s", entry.error)
            self.cmds.ack(GROUP, entry.id)
            return
        try:
            self._dispatch(entry)
        except BrokerError:
            raise  # the loop waits for Redis; the entry stays pending
        except Exception as err:  # noqa: BLE001 - one bad command must not take the daemon down
            log.exception("command %s on %s failed: %s", entry.id, self.cmds.key, err)
            self.cmds.ack(GROUP, entry.id)

    def _dispatch(self, entry: Entry) -> None:
        msg = entry.msg
        kind = msg["type"]
        if kind == "run_stage":
            self._run_stage(entry.id, msg)
        elif kind == "stop_job":
            child = self.children.get(str(msg["job"]))
            if child is not None:
                log.info("stopping job %s: %s", msg["job"], msg["reason"])
                child.stop(msg["reason"])
            self.cmds.ack(GROUP, entry.id)
        else:
            log.warning("ignoring %s command on %s", kind, self.cmds.key)
            self.cmds.ack(GROUP, entry.id)

    def _run_stage(self, entry_id: str, msg: dict) -> None:
        job_id, stage_id, attempt = msg["job"], msg["stage"], msg["attempt"]
        incarnation = msg.get("incarnation", 0)
        incarnation = incarnation if isinstance(incarnation, int) and not isinstance(incarnation, bool) else 0
        child = self.children.get(job_id)
        if child is not None and (child.stage_id, child.attempt) == (stage_id, attempt) \
                and incarnation > child.incarnation:
            # the scheduler counted this node as dropped and re-dispatches it: the old stage process
            # (frozen, cut off) is superseded by a fresh one that rejoins
            if not child.stop_reason:
                child.stop(f"superseded: rejoining the stage as incarnation {incarnation}")
            self._deferred.append((entry_id, msg))
            return
        if child is not None:
            if (child.stage_id, child.attempt) != (stage_id, attempt):
                # the job's next stage (or a resumed attempt) can arrive between the child's last report
                # and its exit: run it once that child has exited
                self._deferred.append((entry_id, msg))
            else:
                self.cmds.ack(GROUP, entry_id)  # delivered twice
            return
        if len(self.children) >= self.max_jobs:
            if any(c.stop_reason or self._job_over(c.job_id) for c in self.children.values()):
                self._deferred.append((entry_id, msg))  # a slot frees up as soon as that child exits
                return
            busy = ", ".join(f"job {c.job_id} stage {c.stage_id}" for c in self.children.values())
            limit = f" (max_concurrent_jobs {self.max_jobs})" if self.max_jobs > 1 else ""
            self._reporter(job_id, stage_id, attempt).error(f"{self.node_id} is busy with {busy}{limit}")
            self.cmds.ack(GROUP, entry_id)
            return
        job = self.jobs.get(job_id)
        if job is None or job.state is not JobState.RUNNING or job.stage != stage_id or job.attempt != attempt:
            log.info("ignoring stale command for job %s stage %s", job_id, stage_id)
            self.cmds.ack(GROUP, entry_id)
            return
        reporter = self._reporter(job_id, stage_id, attempt, incarnation)
        problem = self._check_own_config(stage_id)
        if problem:
            reporter.error(problem)
            self.cmds.ack(GROUP, entry_id)
            return
        work_dir = (self.work_root / self.node_id / f"job-{job_id}"
                    / f"stage-{stage_id}.{attempt}{f'.i{incarnation}' if incarnation else ''}")
        (work_dir / PULSE_FILE).unlink(missing_ok=True)  # a stale pulse must not count as progress
        child = StageChild(job_id=job_id, stage_id=stage_id, attempt=attempt, node_id=self.node_id,
                           config_path=self.config_path, work_dir=work_dir, grace_s=self.stop_grace_s,
                           entry_id=entry_id, incarnation=incarnation)
        spare, self.spare = self.spare, None
        if spare is not None and not spare.alive():
            spare.discard()
            spare = None
        child.start(spare=spare)
        child.watch = StallWatch(work_dir, self._progress_timeout())
        self.children[job_id] = child
        self._advertise_jobs()
        log.info("job %s stage %s: started pid %s (log %s)", job_id, stage_id, child.pid, child.log_path)
        reporter.status("starting", pid=child.pid, log=str(child.log_path))

    def _run_deferred(self) -> None:
        """Commands that waited for a child to exit: tried again (in order) after each exit."""
        if not self._child_exited:
            return
        self._child_exited = False
        waiting, self._deferred = self._deferred, []
        while waiting:
            entry_id, msg = waiting.pop(0)
            try:
                self._handle(Entry(entry_id, msg=msg))
            except BrokerError:  # Redis away: all of them wait for the next try, in order
                self._deferred[:0] = [(entry_id, msg), *waiting]
                self._child_exited = True
                raise

    def _advertise_jobs(self) -> None:
        """The jobs this daemon runs stages of, for `-c nodes` ("1,3"; empty when idle)."""
        self.hb.set_job(",".join(sorted(self.children, key=lambda j: (len(j), j))) or None)

    def _job_over(self, job_id: str) -> bool:
        state = self.jobs.state(job_id)
        return state is None or state.terminal

    def _check_own_config(self, stage_id: int) -> str:
        """Read this node's own trainer_config at stage start (edits between jobs take effect)."""
        from xfed.config import load_stages

        try:
            stages = load_stages(self.config_path, self.node_id)
        except XfedError as err:
            return f"{self.node_id}: {err}"
        if not 0 <= stage_id < len(stages):
            return (f"{self.node_id}: trainer_config_{self.node_id}.json has {len(stages)} stage(s); "
                    f"the job asked for stage {stage_id}")
        return ""

    def _progress_timeout(self) -> float:
        """fed_conf.json's progress_timeout, read at each stage start like the trainer config."""
        from xfed.config import load_fed_conf

        try:
            return float(load_fed_conf(self.config_path).progress_timeout)
        except XfedError:
            return self.fed.progress_timeout

    def _ensure_spare(self) -> None:
        """Keep one warm stage process (retrying every 5 s if spares die unused): while idle, and with
        max_concurrent_jobs > 1 also while stages run, so the next job (or the next stage, or the job
        after those running) starts without imports; with 1, nothing extra sits beside a training stage."""
        if not self.use_spare or (self.children and self.max_jobs == 1):
            return
        if self.spare is not None:
            if self.spare.alive():
                return
            self.spare.discard()  # died unused (see spare.log): do not spin
            self.spare = None
            self._spare_retry_at = time.monotonic() + 5.0
        if time.monotonic() < self._spare_retry_at:
            return
        names: list[str] = []
        try:
            from xfed.config import load_stages

            names = sorted({s.model_info.name for s in load_stages(self.config_path, self.node_id)})
        except XfedError:
            pass  # a broken config is reported when a stage starts
        self.spare = SpareChild(log_path=self.work_root / self.node_id / "spare.log", preload=names).start()

    # -- the child ------------------------------------------------------------------------------
    def _watch_child(self, offline: bool = False) -> None:
        for child in list(self.children.values()):
            self._watch_one(child, offline)

    def _watch_one(self, child: StageChild, offline: bool) -> None:
        rc = child.poll()
        if rc is None:
            watch = child.watch
            if watch is not None and not child.stop_reason and not child.stall_reason:
                quiet = watch.check()
                if quiet is not None:  # frozen, deadlocked or stuck: its own report will never come
                    child.stall_reason = watch.describe(quiet, child.pid)
                    log.error("job %s stage %s: pid %s %s", child.job_id, child.stage_id, child.pid,
                              child.stall_reason)
                    child.kill_group()
                    return
            if not offline and time.monotonic() - child.last_job_check > 0.5:
                child.last_job_check = time.monotonic()
                state = self.jobs.state(child.job_id)
                # a SUCCESSFUL job's children are on their way out after reporting `done`
                if state is None or state in (JobState.FAILED, JobState.STOPPED, JobState.CORRUPT):
                    if not child.stop_reason:
                        log.warning("job %s is %s: stopping its stage process pid %s", child.job_id,
                                    state.value if state else "gone", child.pid)
                    child.stop(f"job is {state.value if state else 'gone'}")
            return
        reporter = self._reporter(child.job_id, child.stage_id, child.attempt, child.incarnation)
        what = describe_exit(rc)
        log.info("job %s stage %s: child pid %s %s", child.job_id, child.stage_id, child.pid, what)
        if child.stall_reason:
            self._send(reporter, "error", {
                "message": f"{self.node_id}: stage {child.stage_id} process (pid {child.pid}) {child.stall_reason}"
                           f" [log {child.log_path}]", "exit": what})
        elif rc in (EXIT_DONE, EXIT_ERROR_REPORTED, EXIT_STOPPED):
            pass  # the child reported for itself
        elif child.stop_reason:
            self._send(reporter, "status", {"state": "stopped", "reason": child.stop_reason, "exit": what})
        else:
            tail = child.log_tail()
            self._send(reporter, "error", {
                "message": f"{self.node_id}: stage {child.stage_id} process (pid {child.pid}) {what}"
                           + (f"; last log line: {tail}" if tail else "") + f" [log {child.log_path}]",
                "exit": what})
        del self.children[child.job_id]
        self._child_exited = True
        self._advertise_jobs()
        try:
            if child.entry_id:
                self.cmds.ack(GROUP, child.entry_id)
        except BrokerError:
            pass  # left pending: the next incarnation sees the job is over and drops it

    def _shutdown_children(self) -> None:
        while self.children:
            self._shutdown_child(self.children.pop(next(iter(self.children))))

    def _shutdown_child(self, child: StageChild) -> None:
        child.kill()
        try:
            self._reporter(child.job_id, child.stage_id, child.attempt, child.incarnation).error(
                f"{self.node_id}: daemon shut down during stage {child.stage_id}")
            if child.entry_id:
                self.cmds.ack(GROUP, child.entry_id)
        except (BrokerError, XfedError):
            pass

    # -- events ---------------------------------------------------------------------------------
    def _reporter(self, job_id: str, stage_id: int, attempt: int, incarnation: int = 0) -> EventReporter:
        return EventReporter(self.r, self.keys, job_id, self.node_id, stage_id, attempt,
                             identity_key=self.identity_key, incarnation=incarnation)

    def _send(self, reporter: EventReporter, kind: str, fields: dict) -> None:
        """Emit now, or keep it for when Redis is back (a death must never go unreported)."""
        try:
            reporter.emit(kind, **fields)
        except BrokerError:
            self._outbox.append((reporter, kind, fields))

    def _flush_outbox(self) -> None:
        while self._outbox:
            reporter, kind, fields = self._outbox[0]
            reporter.emit(kind, **fields)
            self._outbox.pop(0)
