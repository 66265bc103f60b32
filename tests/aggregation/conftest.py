"""A minimal StageContext and a runner that plays one federation's parties as threads on real Redis."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable

import pytest

from xfed.broker.channels import Comm
from xfed.broker.connection import connect
from xfed.broker.keys import Keys


@dataclass
class Ctx:
    """The fields of the node's StageContext that xfed.aggregation uses."""

    job_id: str
    stage_id: int
    node_id: str
    trainer_ids: list[str]
    assist_id: str | None
    comm: Comm
    attempt: int = 0
    fed: Any = None
    identity_key: Any = None
    reports: list = field(default_factory=list)
    incarnation: int = 0
    rejoins: dict = field(default_factory=dict)  # the scheduler's membership record, {node: incarnation}

    def report(self, kind: str, data: dict) -> None:
        self.reports.append((kind, data))

    def should_stop(self) -> bool:
        return False

    def membership(self) -> dict:
        return dict(self.rejoins)


@pytest.fixture
def federation(redis_session, request):
    """make(trainers, assist="assist") -> {node: Ctx}; each node has its own Redis client and Comm."""
    made: list = []
    calls = [0]

    def make(trainers: list[str], assist: str = "assist", *, identities: dict | None = None,
             attempt: int = 0) -> dict[str, Ctx]:
        # each federation is its own job: a Comm deletes what it consumed with its next command, so a
        # second federation on the same mailboxes would find the first one's last messages
        calls[0] += 1
        job = f"{abs(hash(request.node.nodeid)) % 10**9}-{calls[0]}"
        keys = Keys("agg")
        out = {}
        for node in [*trainers, assist]:
            r = connect(redis_session.address, retry_s=5)
            made.append(r)
            comm = Comm(r, keys, job, 0, node, attempt=attempt, timeout=20, poll_s=0.05)
            out[node] = Ctx(job, 0, node, list(trainers), assist, comm, attempt=attempt,
                            fed=SimpleNamespace(identities=identities or {}))
        return out

    yield make
    for r in made:
        r.close()


def run_parties(fns: dict[str, Callable[[], Any]], timeout: float = 60) -> dict[str, Any]:
    """Run each party's function in a thread; re-raise the first error; return {node: result}."""
    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}

    def wrap(node, fn):
        try:
            results[node] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test thread
            errors[node] = exc

    threads = [threading.Thread(target=wrap, args=(n, f), daemon=True) for n, f in fns.items()]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    # stop at the first error: the other parties would wait for the failed one (the scheduler's job in real runs)
    while any(t.is_alive() for t in threads) and not errors and time.monotonic() < deadline:
        time.sleep(0.02)
    if errors:
        node, exc = sorted(errors.items())[0]
        raise exc
    if any(t.is_alive() for t in threads):
        raise TimeoutError("a party did not finish")
    return results
