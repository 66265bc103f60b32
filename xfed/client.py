"""The client (`python xfed.py -c VERB`): start [--follow] [--bar], stop [JOB], status [JOB], list, nodes.

Requests go to the scheduler through the requests stream and the answer comes back on a
per-request reply key (bounded wait); read-only verbs (status, list, nodes) read Redis directly,
so they work even while the scheduler is down.
"""
from __future__ import annotations

import datetime as _dt
import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from xfed.broker.attempts import attempt_history
from xfed.broker.heartbeat import alive_nodes, node_infos
from xfed.broker.jobrecord import Job, JobState
from xfed.broker.jobstore import JobStore
from xfed.broker.messages import NodeState, job_event, stop_job_command
from xfed.broker.orphans import end_if_orphaned
from xfed.broker.requests import request, scheduler_alive
from xfed.broker.streams import ControlStream
from xfed.display import cell
from xfed.errors import JobError, XfedError
from xfed.job_text import duration, progress_text, stage_text
from xfed.scheduler.capacity import only_active_job

REPLY_TIMEOUT_S = 15.0
WIDTH = 100  # tables fit 100 columns; --wide (or --json) gives every column
# left out of the round table without --wide: timings and sizes of the aggregation (what tells whether
# the job learns, and how fast, stays)
WIDE_ONLY = ("rounds", "aggregate_ms", "mask_ms", "unmask_ms", "wait_ms", "bytes_sent", "bytes_received",
             "peak_rss_mb", "eta_s")


def run_client(verb: str, config_path: str, args: list[str], *, bar: bool = False, follow: bool = False,
               wait_nodes: float = 0.0, resume: str | None = None, as_json: bool = False, wide: bool = False) -> int:
    """Dispatch one client verb; returns the process exit code (XfedError -> the CLI's one line)."""
    from xfed.broker.connection import connect
    from xfed.broker.keys import Keys
    from xfed.config import load_fed_conf

    if verb == "start" and args:
        raise XfedError(f"start takes no arguments (got {' '.join(args)})")
    if verb in ("list", "nodes") and args:
        raise XfedError(f"{verb} takes no arguments (got {' '.join(args)})")
    if len(args) > 1:
        raise XfedError(f"{verb} takes at most one JOB argument")
    fed = load_fed_conf(config_path)
    # a one-shot command should not sit for the daemons' full connect timeout
    retry_s = min(5.0, fed.redis.connect_timeout)
    client = Client(fed, connect(fed, retry_s=retry_s, client_name="xfed-client"), Keys(fed.redis.namespace),
                    as_json=as_json, wide=wide)
    if verb == "start":
        return client.start(follow=follow, bar=bar, wait_nodes=wait_nodes, resume=resume)
    job = args[0] if args else None
    if verb == "stop":
        return client.stop(job)
    if verb == "status":
        return client.status(job, bar=bar)
    if verb == "list":
        return client.list()
    if verb == "nodes":
        return client.nodes()
    raise XfedError(f"unknown client verb {verb!r}")


def _ts(t: float | None) -> str:
    return _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


class Client:
    def __init__(self, fed: Any, r: Any, keys: Any, *, as_json: bool = False, console: Console | None = None,
                 wide: bool = False) -> None:
        self.fed, self.r, self.keys, self.as_json, self.wide = fed, r, keys, as_json, wide
        self.jobs = JobStore(r, keys)
        # at most 100 columns (long cells wrap); --wide: every column, as wide as they need
        if console is None:
            tty_width = Console().width if sys.stdout.isatty() else WIDTH
            console = Console(highlight=False, soft_wrap=False, width=400 if wide else min(WIDTH, tty_width))
        self.console = console
        self.interval = fed.heartbeat_interval
        # a Redis failover can lose the scheduler's heartbeat key (the promoted replica never had it, or
        # the master Sentinel fell back to came back empty) until the scheduler's next beat after it
        # reconnects: with a failover window configured, a missing heartbeat is waited for that long
        self.scheduler_grace_s = fed.failover_window_s + 2 * self.interval if fed.failover_window_s > 0 else 0.0

    # -- talking to the scheduler ------------------------------------------------------------
    def scheduler_alive(self) -> bool:
        return scheduler_alive(self.r, self.keys)

    def request(self, msg: dict[str, Any], *, timeout: float = REPLY_TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + self.scheduler_grace_s
        while not self.scheduler_alive():  # one read when it is there (the usual case)
            if time.monotonic() >= deadline:
                raise JobError(f"no scheduler is running for namespace {self.keys.namespace!r} "
                               f"(start one: python xfed.py -s --config_path DIR)")
            time.sleep(min(0.2, self.interval))
        return request(self.r, self.keys, msg, timeout=timeout)

    # -- verbs ------------------------------------------------------------------------------
    def start(self, *, follow: bool = False, bar: bool = False, wait_nodes: float = 0.0,
              resume: str | None = None) -> int:
        participants = list(self.fed.node_ids)
        if wait_nodes > 0:
            self._wait_nodes(participants, wait_nodes)
        msg: dict[str, Any] = {"type": "start"}
        since = "0-0"
        if resume:
            msg["resume"] = str(resume)
            # follow only the new attempt's events
            since = ControlStream(self.r, self.keys.job_events(str(resume))).last_id()
        reply = self.request(msg)
        if not reply["ok"]:
            raise JobError(str(reply.get("error") or "start refused"))
        job_id = str(reply["job"])
        if self.as_json and not follow:
            print(json.dumps({k: reply[k] for k in ("job", "stage", "attempt") if k in reply}))
        else:
            print(job_id, flush=True)
            if resume:
                print(f"job {job_id} resumed at stage {reply.get('stage')} (attempt {reply.get('attempt')})",
                      file=sys.stderr, flush=True)
        if follow:
            return self.follow(job_id, bar=bar, since=since)
        return 0

    def _wait_nodes(self, participants: list[str], seconds: float) -> None:
        """Wait for every participant and the scheduler to be alive (all started at once by a script)."""
        deadline = time.monotonic() + seconds
        while True:
            alive = alive_nodes(self.r, self.keys, participants)
            missing = [n for n in participants if n not in alive]
            if not missing and self.scheduler_alive():
                return
            if time.monotonic() >= deadline:
                if not missing:
                    return  # request() names the missing scheduler
                raise JobError(f"cannot start: node(s) not alive after waiting {seconds:g} s: {', '.join(missing)}")
            time.sleep(min(0.25, max(0.01, deadline - time.monotonic())))

    def stop(self, job_id: str | None) -> int:
        if not self.scheduler_alive():
            return self._stop_without_scheduler(job_id)
        msg: dict[str, Any] = {"type": "stop"}
        if job_id is not None:
            msg["job"] = str(job_id)
        reply = self.request(msg)
        if not reply["ok"]:
            raise JobError(str(reply.get("error") or "stop refused"))
        if self.as_json:
            print(json.dumps({"job": reply["job"], "state": reply.get("state", "STOPPED")}))
        else:
            print(f"job {reply['job']} {reply.get('state', 'STOPPED')}")
        return 0

    def _stop_without_scheduler(self, job_id: str | None) -> int:
        """No scheduler to ask: mark the job STOPPED and tell its nodes ourselves (they also watch the state)."""
        if job_id is None:
            job = self.jobs.require(only_active_job(self.jobs.active()))
        else:
            job = self.jobs.require(str(job_id))
        reason = "stopped by client request (no scheduler was running)"
        if not self.jobs.transition(job.job_id, JobState.STOPPED, reason=reason):
            raise JobError(f"job {job.job_id} already ended {self.jobs.require(job.job_id).state.value}")
        for n in job.participants:
            ControlStream(self.r, self.keys.node_cmd(n), maxlen=1000).add(
                stop_job_command(job.job_id, f"job STOPPED: {reason}"))
        ControlStream(self.r, self.keys.job_events(job.job_id), maxlen=100_000).add(
            job_event(job.job_id, JobState.STOPPED.value, job.stage, reason=reason))
        self.jobs.expire(job.job_id)
        print(f"job {job.job_id} STOPPED (no scheduler is running: stopped directly)")
        return 0

    def _job(self, job_id: str | None) -> Job:
        if job_id is not None:
            return self.jobs.require(str(job_id))
        job = self.jobs.latest()
        if job is None:
            raise JobError("no jobs yet")
        return job

    def status(self, job_id: str | None, *, bar: bool = False) -> int:
        job = self._job(job_id)
        job, note = end_if_orphaned(self.r, self.keys, self.jobs, job,
                                    recheck_s=self.interval)
        if note:
            print(note, file=sys.stderr, flush=True)
        rounds = self.round_rows(job.job_id)
        alive = alive_nodes(self.r, self.keys, job.participants)
        if self.as_json:
            out = job.to_dict()
            out["rounds"] = rounds
            out["alive"] = sorted(alive)
            out["attempts"] = attempt_history(job.extra)  # earlier attempts of a resumed job
            print(json.dumps(out, default=str))
            return 0
        head = Table(show_header=False, box=None, pad_edge=False)
        head.add_row("job", job.job_id)
        head.add_row("state", job.state.value)
        head.add_row("stage", stage_text(job.stage, job.n_stages))
        if job.attempt:
            head.add_row("attempt", str(job.attempt))
        for earlier in attempt_history(job.extra):
            why = f": {earlier.get('reason')}" if earlier.get("reason") else ""
            head.add_row(f"attempt {earlier.get('attempt')}", f"{earlier.get('state')}{why}")
        head.add_row("created", _ts(job.created))
        head.add_row("started", _ts(job.started))
        head.add_row("ended", _ts(job.ended))
        head.add_row("duration", duration(job))
        if job.reason:
            head.add_row("reason", job.reason)
        if job.node:
            head.add_row("failed node", job.node)
        self.console.print(head)
        if job_id is None:  # the latest job was chosen: say which others are running (max_concurrent_jobs)
            others = [j.job_id for j in self.jobs.active() if j.job_id != job.job_id]
            if others:
                self.console.print(f"also running: job {', '.join(reversed(others))} (-c status --job_id N)")
        table = Table(title="nodes", title_justify="left")
        for col in ("node", "state", "stage", "progress", "stage pid", "alive"):
            table.add_column(col, no_wrap=col != "progress")
        table.add_column("message", overflow="fold")
        for n in job.participants:
            s = job.nodes.get(n)
            if s is None:
                table.add_row(n, "-", "-", "-", "-", "yes" if n in alive else "no", "")
                continue
            p = progress_text(s.progress or {}) or "-"
            if bar:
                frac = 1.0 if s.state is NodeState.DONE else (s.progress or {}).get("fraction")
                if isinstance(frac, (int, float)):
                    filled = max(0, min(20, round(20 * float(frac))))
                    p = f"{'█' * filled}{'░' * (20 - filled)} {p}"
            table.add_row(n, s.state, stage_text(s.stage), p, str(s.pid or "-"), "yes" if n in alive else "no",
                          s.message or "")
        self.console.print(table)
        if rounds:
            self.console.print(self._round_table(rounds, wide=self.wide))
            if not self.wide:
                self.console.print("(the main columns; every column with --wide or --json)")
        return 0

    def round_rows(self, job_id: str) -> list[dict[str, Any]]:
        """Per-round metrics events of a job, oldest first (one row per node and round)."""
        rows = []
        for entry in ControlStream(self.r, self.keys.job_events(job_id)).read("0-0", count=100_000):
            m = entry.msg
            if m and m["type"] == "metrics":
                attempt = {"attempt": m["attempt"]} if m.get("attempt") else {}
                data = m["data"]
                secagg = data.get("secagg") if isinstance(data, dict) else None
                if isinstance(secagg, dict):  # the secure aggregator's record: who a round's mean is over
                    if "round" not in secagg:
                        continue  # its dropout policy, kept by the scheduler
                    data = {"round": secagg["round"], "contributors": ",".join(map(str, secagg.get("contributors") or [])),
                            "dropped": ",".join(map(str, secagg.get("dropped") or [])) or "-"}
                rows.append({"node": m["node"], "stage": m["stage"], **attempt, **data})
        return rows

    @staticmethod
    def _round_table(rows: list[dict[str, Any]], *, wide: bool = True) -> Table:
        cols = ["stage", "round", "node"]
        for row in rows:
            for k in row:
                if k not in cols:
                    cols.append(k)
        if not wide:  # the stage column only when there is more than one
            several = len({r.get("stage") for r in rows}) > 1
            cols = [c for c in cols if c not in WIDE_ONLY and (c != "stage" or several)]
        table = Table(title="rounds", title_justify="left")
        for c in cols:
            table.add_column(c, justify="right" if c not in ("node",) else "left")
        for row in sorted(rows, key=lambda r: (r.get("stage", 0), _num(r.get("round")), r.get("node", ""))):
            table.add_row(*[cell(row.get(c)) for c in cols])
        return table

    def list(self) -> int:
        jobs = self.jobs.list(limit=200)
        if self.as_json:
            print(json.dumps([j.to_dict() for j in jobs], default=str))
            return 0
        table = Table(title="jobs", title_justify="left")
        for col in ("job", "state", "stage", "created", "duration"):
            table.add_column(col, no_wrap=True)
        table.add_column("reason", overflow="fold")
        for j in jobs:
            table.add_row(j.job_id, j.state.value, stage_text(j.stage, j.n_stages), _ts(j.created), duration(j),
                          j.reason or "")
        self.console.print(table)
        return 0

    def nodes(self) -> int:
        configured = list(self.fed.node_ids)
        infos = node_infos(self.r, self.keys, None)
        for n in configured:
            infos.setdefault(n, node_infos(self.r, self.keys, [n])[n])
        sched_alive = self.scheduler_alive()
        if self.as_json:
            print(json.dumps({"scheduler": sched_alive, "nodes": {n: i.to_dict() for n, i in infos.items()}}))
            return 0
        table = Table(title="nodes", title_justify="left")
        for col in ("node", "role", "alive", "host", "daemon pid", "version", "job", "configured"):
            table.add_column(col)
        order = configured + sorted(n for n in infos if n not in configured)
        for n in order:
            i = infos[n]
            alive = i.alive if n != "scheduler" else sched_alive
            table.add_row(n, i.role or "-", "yes" if alive else "no", i.host or "-", str(i.pid or "-"),
                          i.version or "-", i.job or "-", "yes" if n in configured else "no")
        self.console.print(table)
        return 0

    # -- following a job --------------------------------------------------------------------
    def follow(self, job_id: str, *, bar: bool = False, since: str = "0-0") -> int:
        """Stream a job's events (after `since`) until it ends; 0 when SUCCESSFUL, 1 otherwise."""
        from xfed.follow import Follower

        return Follower(self.r, self.keys, job_id, recheck_s=self.interval, bar=bar, since=since).run()


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) else 0.0


__all__ = ["Client", "run_client", "JobState"]
