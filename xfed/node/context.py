"""StageContext: everything an operator's `run(ctx)` gets for one stage on one node."""
from __future__ import annotations

import threading
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

    A call only reads the flag. A background thread keeps it current: it blocks on the job's
    signal stream (`Keys.job_signal`, one entry per state change) and reads the job's position
    when woken, and at least every `poll_s` seconds in case a signal was missed; so a stage never
    spends a round trip on the job's state between steps or while it waits for a message
    (`fresh=True` reads the state now: classifying a failure)."""

    def __init__(self, jobs: JobStore, job_id: str, stage_id: int, attempt: int, *, poll_s: float = 5.0,
                 on_poll: Callable[[], None] | None = None) -> None:
        self.jobs, self.job_id = jobs, str(job_id)
        self.on_poll = on_poll  # the stage's pulse (xfed.node.pulse): every poll shows the stage moves
        self.stage_id, self.attempt, self.poll_s = int(stage_id), int(attempt), poll_s
        self.flag = threading.Event()
        self.reason = ""
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def stop(self, reason: str) -> None:
        self.reason = self.reason or reason
        self.flag.set()

    def close(self) -> None:
        """End the background thread (within one blocking read)."""
        self._closed.set()

    def __call__(self, *, fresh: bool = False) -> bool:
        """True once the stage should stop; `fresh` reads the job's state now."""
        if self.on_poll is not None:
            self.on_poll()
        if self.flag.is_set():
            return True
        if fresh:
            self.check()
        elif self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._watch, name=f"stop-watcher-{self.job_id}",
                                                    daemon=True)
                    self._thread.start()
        return self.flag.is_set()

    def check(self) -> None:
        """Read the job's position once and set the flag when this stage should stop."""
        try:
            state, stage, attempt = self.jobs.position(self.job_id)
        except BrokerError:  # a Redis blip is not a stop; Comm has its own timeouts
            return
        if state is None:
            self.stop("job no longer exists in Redis")
        elif state != "RUNNING":
            self.stop(f"job is {state}")
        elif stage is not None and int(stage) != self.stage_id:
            self.stop(f"job moved to stage {int(stage)}")
        elif attempt is not None and int(attempt) != self.attempt:
            self.stop(f"job is now attempt {int(attempt)}")

    def _watch(self) -> None:
        last: bytes | str = "0-0"
        while not self._closed.is_set() and not self.flag.is_set():
            self.check()
            if self.flag.is_set():
                return
            try:
                last = self.jobs.wait_signal(self.job_id, last, self.poll_s)
            except BrokerError:  # a Redis blip or a user without the key: poll instead
                self._closed.wait(min(self.poll_s, 1.0))


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
