"""StageContext: everything an operator's `run(ctx)` gets for one stage on one node."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from xfed.broker.jobstore import JobStore
from xfed.errors import BrokerError

if TYPE_CHECKING:  # a stage child imports these anyway; the daemon need not
    from xfed.broker.channels import Comm
    from xfed.config import FedConf, Stage
    from xfed.security.identity import IdentityKey


class StopWatcher:
    """`should_stop()` for a stage: a local flag (SIGTERM) or the job no longer RUNNING this stage.

    Reads the job hash at most every `poll_s` seconds so operators may call it in tight loops."""

    def __init__(self, jobs: JobStore, job_id: str, stage_id: int, attempt: int, *, poll_s: float = 0.25,
                 on_poll: Callable[[], None] | None = None) -> None:
        self.jobs, self.job_id = jobs, str(job_id)
        self.on_poll = on_poll  # the stage's pulse (xfed.node.pulse): every poll shows the stage moves
        self.stage_id, self.attempt, self.poll_s = int(stage_id), int(attempt), poll_s
        self.flag = threading.Event()
        self.reason = ""
        self._checked = 0.0
        self._lock = threading.Lock()

    def stop(self, reason: str) -> None:
        self.reason = self.reason or reason
        self.flag.set()

    def __call__(self, *, fresh: bool = False) -> bool:
        """True once the stage should stop; `fresh` skips the read cache (classifying a failure)."""
        if self.on_poll is not None:
            self.on_poll()
        if self.flag.is_set():
            return True
        now = time.monotonic()
        with self._lock:
            if not fresh and now - self._checked < self.poll_s:
                return False
            self._checked = now
        try:
            state, stage, attempt = self.jobs.position(self.job_id)
        except BrokerError:  # a Redis blip is not a stop; Comm has its own timeouts
            return False
        if state is None:
            self.stop("job no longer exists in Redis")
        elif state != "RUNNING":
            self.stop(f"job is {state}")
        elif stage is not None and int(stage) != self.stage_id:
            self.stop(f"job moved to stage {int(stage)}")
        elif attempt is not None and int(attempt) != self.attempt:
            self.stop(f"job is now attempt {int(attempt)}")
        return self.flag.is_set()


@dataclass
class StageContext:
    """The contract of docs/CONTRACTS.md: built by the stage runner, handed to `operator.run`."""

    job_id: str
    stage_id: int
    attempt: int
    node_id: str
    identity: str
    stage: Stage                    # this node's own Stage config (never leaves the party)
    fed: FedConf
    trainer_ids: list[str]
    assist_id: str | None
    comm: Comm                      # this (job, stage)'s channels
    work_dir: Path
    identity_key: IdentityKey | None = None  # this node's Ed25519 key when fed_conf pins identities
    job_uid: str = ""               # the job record's uid: output folders and resume states carry it
    incarnation: int = 0            # > 0: this node was restarted and rejoins the running stage
    _report: Callable[[str, dict], None] = field(repr=False, default=lambda kind, data: None)
    _should_stop: Callable[[], bool] = field(repr=False, default=lambda: False)
    # the scheduler's record of who restarted into this stage: {node: incarnation}
    _membership: Callable[[], dict[str, int]] = field(repr=False, default=lambda: {})

    def report(self, kind: str, data: dict) -> None:
        """kind in progress|metrics|log|warning -> the job's event stream (best effort)."""
        try:
            self._report(kind, data)
        except BrokerError:
            pass

    def should_stop(self) -> bool:
        return self._should_stop()

    def membership(self) -> dict[str, int]:
        """{node: incarnation} of the label trainers the scheduler re-dispatched into this stage
        (xfed.scheduler.dropouts); {} when none, or when Redis does not answer (asked again next round)."""
        try:
            return dict(self._membership())
        except BrokerError:
            return {}
