"""Every data-plane message signed: a broker that rewrites an upload or the mean fails the job, before use.

Real processes (scheduler, assist trainer, two label trainers as `python xfed.py` daemons) reach a
real /usr/bin/redis-server only through a RESP proxy that plays the broker (`BrokerInTheMiddle` and
`Attacker` from test_security_identity.py): it decodes mailbox frames with xfed's own decoder and
re-encodes them with xfed's own encoder, keeping or dropping the signature. Identities are pinned for every
node, the assist trainer included, unless a test says otherwise.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.integration.conftest import serve, write_json_atomically
from tests.integration.test_security_identity import Attacker, BrokerInTheMiddle

pytestmark = pytest.mark.integration

TRAINERS = ["node-1", "node-2"]
ASSIST = "assist_trainer"
PARAMS = {"rounds": 2, "dim": 8, "weighting": "index", "seed": 11,
          "encryption": {"otp": {"key_exchange": {"key_bitlength": 2048}}}}


class Tamper(Attacker):
    """The broker's rewrite of mailbox frames (Attacker records every frame and re-encodes with
    xfed's own code): change the ones `target(header)` picks. `action` "shift" adds 1 to every
    tensor (a poisoned update / mean), "strip" drops the signature (posing as a federation without
    identities); the signature is otherwise kept."""

    def __init__(self) -> None:
        super().__init__("frames")
        self.hits: list = []
        self.target = None
        self.action = "shift"

    def _tamper(self, frame):
        from xfed.broker.frames import SIGNATURE_KEY

        if self.target is None or not self.target(frame.header):
            return None
        self.hits.append(frame.header)
        if self.action == "strip":
            return frame.tensors, {k: v for k, v in frame.meta.items() if k != SIGNATURE_KEY}
        return {k: v + np.ones((), dtype=v.dtype) for k, v in frame.tensors.items()}, frame.meta


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    from xfed.security.identity import default_key_path, generate, write_private_key

    tamper = Tamper()
    with serve(tmp_path_factory.mktemp("framesfed"), trainers=list(TRAINERS), namespace="frames") as fed:
        proxy = BrokerInTheMiddle((fed.redis.host, fed.redis.port), tamper)
        try:
            fed.write_config(PARAMS)
            identities = {}
            for node in [*TRAINERS, ASSIST]:
                key = generate(node)
                write_private_key(key, default_key_path(fed.config, node))
                identities[node] = key.public_hex
            conf_path = fed.config / "fed_conf.json"
            conf = {**json.loads(conf_path.read_text()), "redis_server": proxy.address}

            def pin(nodes) -> None:
                # stage processes read fed_conf.json at stage start: applies to the next job
                write_json_atomically(conf_path, {**conf, "identities": {n: identities[n] for n in nodes}})

            pin(identities)
            fed.start_all()
            yield fed, tamper, pin
        finally:
            fed.stop_all()
            proxy.close()
    assert proxy.errors == []


def run_job(fed, tamper, pin, *, target=None, action="shift", pinned=(*TRAINERS, ASSIST), during=None):
    """One job through the broker with `target` frames rewritten, `during(job_id)` called once it is
    started; returns (job, its events)."""
    from xfed.broker.streams import ControlStream

    pin(pinned)
    with tamper.lock:
        tamper.frames, tamper.hits, tamper.target, tamper.action = [], [], target, action
    try:
        res = fed.client("-c", "start")
        assert res.returncode == 0, res.stderr + fed.logs()
        if during is not None:
            during(res.stdout.split()[0])
        job = fed.wait_job(res.stdout.split()[0])
    finally:
        with tamper.lock:
            tamper.target = None
        pin((*TRAINERS, ASSIST))
    events = [e.msg for e in ControlStream(fed.redis_client(), fed.keys().job_events(job.job_id)).read("0-0")]
    return job, events


def _rounds_done(events, node: str) -> list[int]:
    return [e["data"]["round"] for e in events if e["type"] == "metrics" and e["node"] == node]


def test_signed_job_succeeds_and_every_message_carries_a_signature(broker):
    fed, tamper, pin = broker
    job, events = run_job(fed, tamper, pin)
    assert job.state.value == "SUCCESSFUL", (job, fed.logs())
    channels = {f.header.channel for f in tamper.frames}
    assert {"horizontal_mean.params", "otp/dh", "agg/init", "agg/0/up", "agg/0/down", "agg/1/down"} <= channels
    unsigned = [(f.header.channel, f.header.sender) for f in tamper.frames if len(f.meta.get("sig", "")) != 128]
    assert unsigned == []
    assert not [e for e in events if e["type"] == "warning" and "not authenticated" in e["data"]["message"]]


def test_a_changed_upload_fails_the_job_before_the_root_sums_it(broker):
    fed, tamper, pin = broker
    job, events = run_job(fed, tamper, pin,
                          target=lambda h: h.channel == "agg/1/up" and h.sender == "node-1")
    assert len(tamper.hits) == 1
    assert job.state.value == "FAILED" and job.node == ASSIST, job
    assert job.reason == (f"{ASSIST}: message agg/1/up node-1 -> {ASSIST}: signature does not verify against the "
                          "pinned identity of node-1 (tampered, replayed or from another session)"), job.reason
    # round 0 went through; no party ever got a round-1 mean (the root refused before summing)
    assert all(_rounds_done(events, n) == [0] for n in TRAINERS), events


def test_a_changed_mean_fails_the_job_before_the_trainer_uses_it(broker):
    fed, tamper, pin = broker
    job, events = run_job(fed, tamper, pin,
                          target=lambda h: h.channel == "agg/0/down" and h.receiver == "node-2")
    assert len(tamper.hits) == 1
    assert job.state.value == "FAILED" and job.node == "node-2", job
    assert (f"message agg/0/down {ASSIST} -> node-2: signature does not verify against the pinned identity "
            f"of {ASSIST}") in job.reason and "\n" not in job.reason, job.reason
    assert "aggregate differs" not in job.reason
    assert _rounds_done(events, "node-2") == []


def test_a_stripped_signature_is_refused_not_downgraded(broker):
    fed, tamper, pin = broker
    job, _ = run_job(fed, tamper, pin, action="strip",
                     target=lambda h: h.channel == "agg/init" and h.receiver == "node-1")
    assert len(tamper.hits) == 1
    assert job.state.value == "FAILED" and job.node == "node-1", job
    assert f"message agg/init {ASSIST} -> node-1: unsigned, but identities are pinned" in job.reason, job.reason


def test_without_the_assist_trainer_pinned_its_mean_is_not_protected_and_a_warning_says_so(broker):
    fed, tamper, pin = broker
    job, events = run_job(fed, tamper, pin, pinned=TRAINERS)
    assert job.state.value == "SUCCESSFUL", (job, fed.logs())
    warnings = [e for e in events if e["type"] == "warning" and "not authenticated" in e["data"]["message"]]
    assert len(warnings) == 1 and warnings[0]["node"] == ASSIST, warnings
    assert f"no key for {ASSIST} (the aggregator" in warnings[0]["data"]["message"]
    assert all("sig" not in f.meta for f in tamper.frames if f.header.sender == ASSIST)
    # the same change to the mean now reaches node-2, which uses it: only horizontal_mean's
    # known-answer check notices (a training job has none)
    job, events = run_job(fed, tamper, pin, pinned=TRAINERS,
                          target=lambda h: h.channel == "agg/0/down" and h.receiver == "node-2")
    assert job.state.value == "FAILED" and job.node == "node-2", job
    assert "aggregate differs from the expected mean" in job.reason and "signature" not in job.reason, job.reason


# --- node events: unforgeable with identities pinned ----------------------------------------------

@pytest.fixture
def slow_rounds(broker):
    """Rounds that last long enough for an event to be forged while the job runs."""
    fed, _, pin = broker
    fed.write_config({**PARAMS, "round_delay_s": 0.5})
    pin((*TRAINERS, ASSIST))
    yield
    fed.write_config(PARAMS)
    pin((*TRAINERS, ASSIST))


def _forge_errors(fed):
    """node-1, with the plain write access to the events stream every node has, claims node-2 failed:
    once unsigned, once signed with its own key."""
    import time

    from xfed.broker.streams import ControlStream
    from xfed.security.events import event_transcript
    from xfed.security.identity import default_key_path, load_private_key

    own = load_private_key(default_key_path(fed.config, "node-1"), "node-1")

    def forge(job_id: str) -> None:
        stream = ControlStream(fed.redis_client(), fed.keys().job_events(job_id))
        event = {"type": "error", "job": job_id, "node": "node-2", "stage": 0, "attempt": 0, "ts": time.time(),
                 "message": "forged by node-1"}
        stream.add(event)
        stream.add({**event, "sig": own.private.sign(event_transcript(fed.namespace, event)).hex()})
    return forge


def test_an_error_event_forged_in_another_nodes_name_is_ignored(broker, slow_rounds):
    fed, tamper, pin = broker
    job, events = run_job(fed, tamper, pin, during=_forge_errors(fed))
    assert job.state.value == "SUCCESSFUL", (job, fed.logs())
    assert sum(e["type"] == "error" for e in events) == 2   # both forgeries are in the stream, unapplied
    log = (fed.root / "scheduler.log").read_text(errors="replace")
    assert "ignored: error event in the name of node-2: unsigned, but identities are pinned" in log, log
    assert "ignored: error event in the name of node-2: signature does not verify against its pinned identity" in log


def test_without_identities_a_forged_error_event_fails_the_job_in_the_other_nodes_name(broker, slow_rounds):
    fed, tamper, pin = broker
    job, _ = run_job(fed, tamper, pin, pinned=(), during=_forge_errors(fed))
    assert job.state.value == "FAILED" and job.node == "node-2" and job.reason == "node-2: forged by node-1", job
