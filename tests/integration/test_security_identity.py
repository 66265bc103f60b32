"""A malicious broker between the parties and Redis: signed DH values stop it; unsigned ones do not.

The broker is a small RESP proxy (`BrokerInTheMiddle`): every process reaches Redis only through it,
and it may rewrite any XADD on its way in, as whoever runs or sits in front of Redis could. It
decodes data-plane frames with xfed's own decoder and re-encodes them with xfed's own encoder.

- identities pinned: one swapped DH public value fails the job with a signature error naming the pair.
- no identities: the same swap is not recognised as an attack (only horizontal_mean's known-answer
  check notices the wrong aggregate); a broker that swaps both values learns both pad streams,
  strips the pads off every upload and reads each party's update exactly, and the job SUCCEEDS.
- what the root receives under otp: no plaintext weight anywhere, `__weight__` masked.
"""
from __future__ import annotations

import json
import socket
import threading
from contextlib import contextmanager
from typing import Callable

import numpy as np
import pytest

from tests.integration.conftest import serve, write_json_atomically

pytestmark = pytest.mark.integration

TRAINERS = ["node-1", "node-2"]
GROUP_BITS = 2048  # the smallest RFC 7919 group keeps the DH fast; the attack does not depend on it
PARAMS = {"rounds": 2, "dim": 8, "weighting": "index", "seed": 5,
          "encryption": {"otp": {"key_exchange": {"key_bitlength": GROUP_BITS}}}}


# --- the broker in the middle ---------------------------------------------------------------------

def _parse_command(buf: bytearray) -> tuple[list[bytes] | None, int]:
    """One RESP multibulk command from the front of buf: (args, bytes used), or (None, 0) if incomplete."""
    if not buf:
        return None, 0
    if buf[0] != ord("*"):
        raise ValueError("inline commands are not expected from redis-py")
    end = buf.find(b"\r\n")
    if end < 0:
        return None, 0
    n, pos, args = int(buf[1:end]), end + 2, []
    for _ in range(n):
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return None, 0
        length = int(buf[pos + 1:end])
        start, stop = end + 2, end + 2 + length
        if stop + 2 > len(buf):
            return None, 0
        args.append(bytes(buf[start:stop]))
        pos = stop + 2
    return args, pos


def _encode_command(args: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class BrokerInTheMiddle:
    """TCP proxy in front of Redis; `rewrite(args) -> args` sees (and may change) every command."""

    def __init__(self, upstream: tuple[str, int], rewrite: Callable[[list[bytes]], list[bytes]]) -> None:
        self.upstream, self.rewrite = upstream, rewrite
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.errors: list[str] = []
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._socks += [client, server]
            threading.Thread(target=self._up, args=(client, server), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket) -> None:
        buf = bytearray()
        try:
            while data := client.recv(1 << 16):
                buf += data
                while True:
                    args, used = _parse_command(buf)
                    if args is None:
                        break
                    del buf[:used]
                    try:
                        args = self.rewrite(args)
                    except Exception as exc:  # the attacker's own bug must show in the test, not hang it
                        self.errors.append(f"{type(exc).__name__}: {exc}")
                    server.sendall(_encode_command(args))
        except OSError:
            pass
        finally:
            server.close()

    @staticmethod
    def _down(server: socket.socket, client: socket.socket) -> None:
        try:
            while data := server.recv(1 << 16):
                client.sendall(data)
        except OSError:
            pass
        finally:
            client.close()

    def close(self) -> None:
        self.listener.close()
        for s in self._socks:
            try:
                s.close()
            except OSError:
                pass


def _shared_key(mailbox: bytes) -> bytes:
    """ns:job:{J}:s:S.A:to:R:from:N -> ns:job:{J}:p:S.A:N, where N publishes (xfed.broker.keys.Keys.shared)."""
    prefix, rest = mailbox.split(b":s:", 1)
    return prefix + b":p:" + rest.split(b":to:", 1)[0] + b":" + mailbox.rsplit(b":from:", 1)[1]


class Attacker:
    """What the broker does to mailbox XADDs: log them, swap DH values, strip pads (see `mode`).

    mode "observe": change nothing. "swap_one": replace the DH value node-1 sends node-2 with the
    attacker's own. "replay": replace it with node-1's genuine signed value (and signature) from the
    previous job. "mitm": replace both DH values, derive both pad streams, and replace every
    masked upload by the same upload with the pads removed (so the sum still comes out right).
    """

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.mode = "observe"
        self.lock = threading.Lock()
        self.frames: list = []                      # every decoded data-plane frame (header, meta, tensors)
        self.recovered: dict[tuple[str, int], np.ndarray] = {}   # (node, round) -> plaintext update
        self._private: dict[str, int] = {}          # session -> attacker's DH private key
        self._originals: dict[tuple[str, str], int] = {}         # (session, sender) -> real public value
        self._streams: dict[str, object] = {}       # sender -> pad stream it masks with (known to us)
        self.last_signed: dict[tuple[str, str], dict] = {}      # (sender, receiver) -> last genuine DH meta
        self.strip_signatures = False                # with a swap: drop the `sig` field too
        self._published: dict[tuple[bytes, bytes], list[bytes]] = {}  # (shared key, publish no.) -> chunks

    def __call__(self, args: list[bytes]) -> list[bytes]:
        if len(args) < 5 or args[0].upper() != b"XADD" or (b":to:" not in args[1] and b":p:" not in args[1]):
            return args
        star = args.index(b"*", 2)
        fields = dict(zip(args[star + 1::2], args[star + 2::2], strict=True))
        if b":p:" in args[1]:  # a payload published once (Comm.publish): kept to read with its headers
            with self.lock:
                self._published.setdefault((args[1], fields[b"u"]), []).append(fields[b"d"])
            return args
        if fields.get(b"n") != b"1":
            return args
        from xfed.broker.frames import decode_frame, encode_frame

        data = fields[b"d"]
        if b"p" in fields:  # a published message's header: the payload went to the sender's shared stream
            pub = fields[b"p"].split(b" ")[0]
            with self.lock:
                data += b"".join(self._published.get((_shared_key(args[1]), pub), []))
        frame = decode_frame(data)
        with self.lock:
            self.frames.append(frame)
            new = self._tamper(frame)
        if new is None:
            return args
        tensors, meta = new
        data = encode_frame(frame.header, tensors, meta)
        fields.pop(b"p", None)  # the broker's version travels whole in the mailbox (a receiver accepts both)
        fields[b"d"], fields[b"z"] = data, str(len(data)).encode()
        return args[:star + 1] + [x for kv in fields.items() for x in kv]

    def _tamper(self, frame):
        from xfed.crypto import generate_keypair, named_group, pad_stream, shared_secret

        h, meta = frame.header, frame.meta
        if h.channel == "otp/dh" and self.mode != "replay":
            self.last_signed[(h.sender, h.receiver)] = dict(meta)
        if self.mode == "observe":
            return None
        if h.channel == "otp/dh":
            if (h.sender, h.receiver) != ("node-1", "node-2") and self.mode in ("swap_one", "replay"):
                return None
            if self.mode == "replay":  # node-1's signed value from an earlier job, relabelled for this one
                old = self.last_signed[(h.sender, h.receiver)]
                return None, {**meta, "public": old["public"], "sig": old["sig"]}
            session, group = meta["session"], named_group(int(meta["group"]))
            if session not in self._private:
                self._private[session], _ = generate_keypair(group)
            private = self._private[session]
            mine = pow(group.g, private, group.p)
            self._originals[(session, h.sender)] = int(meta["public"], 16)
            if self.mode == "mitm":
                # the sender will use secret(its private, our public) = secret(our private, its public)
                secret = shared_secret(group, private, int(meta["public"], 16))
                self._streams[h.sender] = pad_stream(secret, session=session, node_a=h.sender, node_b=h.receiver)
            forged = {**meta, "public": format(mine, "x")}
            if self.strip_signatures:  # downgrade: pose as a federation without identities
                forged.pop("sig", None)
            return frame.tensors or None, forged
        if self.mode == "mitm" and h.channel.startswith("agg/") and h.channel.endswith("/up"):
            return self._strip(frame), meta
        return None

    def _strip(self, frame) -> dict[str, np.ndarray]:
        """The upload minus the sender's pads: what it would have sent with no masking at all."""
        from xfed.crypto import mask, unmask_sum

        sender = frame.header.sender
        stream = self._streams[sender]
        (peer,) = set(stream.pair) - {sender}
        zeros = {k: np.zeros(v.shape) for k, v in frame.tensors.items()}
        # masking zeros as the peer gives exactly the negation of the sender's pads
        anti = mask(zeros, bits=64, weight=0.0, n_parties=2, self_id=peer, peer_streams={sender: stream},
                    workers=0)
        plain = {k: frame.tensors[k] + anti[k] for k in frame.tensors}   # uint64 arithmetic wraps mod 2^64
        decoded = unmask_sum([plain], bits=64)
        round_idx = int(frame.header.channel.split("/")[1])
        self.recovered[(sender, round_idx)] = decoded["mean"] / float(decoded["__weight__"])
        return plain

    def uploads(self) -> list:
        return [f for f in self.frames if f.header.channel.startswith("agg/") and f.header.channel.endswith("/up")]


# --- the federation behind it ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def mitm(tmp_path_factory):
    from xfed.security.identity import default_key_path, generate, write_private_key

    attacker = Attacker("mitm")
    with serve(tmp_path_factory.mktemp("mitmfed"), trainers=list(TRAINERS), namespace="mitm") as fed:
        proxy = BrokerInTheMiddle((fed.redis.host, fed.redis.port), attacker)
        try:
            fed.write_config(PARAMS)
            identities = {}
            for node in TRAINERS:
                key = generate(node)
                write_private_key(key, default_key_path(fed.config, node))
                identities[node] = key.public_hex
            conf_path = fed.config / "fed_conf.json"
            conf = json.loads(conf_path.read_text())
            conf["redis_server"] = proxy.address   # every process talks to Redis through the attacker

            def pin(on: bool) -> None:
                # stage processes read fed_conf.json at stage start, so this applies to the next job
                write_json_atomically(conf_path, {**conf, "identities": identities} if on else conf)

            pin(True)
            fed.start_all()
            yield fed, attacker, pin
        finally:
            fed.stop_all()  # before the proxy closes: daemons leaving still reach Redis
            proxy.close()
    assert proxy.errors == []


@contextmanager
def attack(attacker: Attacker, pin, mode: str, *, pinned: bool, strip_signatures: bool = False):
    """Run what is inside with identities pinned or not and the broker in `mode`; then back to an
    honest broker and pinned identities, however the job went."""
    pin(pinned)
    attacker.mode, attacker.strip_signatures = mode, strip_signatures
    try:
        yield
    finally:
        attacker.mode, attacker.strip_signatures = "observe", False
        pin(True)


def run_job(fed) -> object:
    res = fed.client("-c", "start")
    assert res.returncode == 0, res.stderr + fed.logs()
    return fed.wait_job(res.stdout.split()[0])


def test_signed_otp_job_succeeds_and_weights_travel_masked(mitm):
    fed, attacker, pin = mitm
    pin(True)
    attacker.mode, attacker.frames = "observe", []
    job = run_job(fed)
    assert job.state.value == "SUCCESSFUL", (job, fed.logs())
    dh = [f for f in attacker.frames if f.header.channel == "otp/dh"]
    assert len(dh) == 2 and all(isinstance(f.meta.get("sig"), str) and len(f.meta["sig"]) == 128 for f in dh)
    ups = attacker.uploads()
    assert len(ups) == 2 * PARAMS["rounds"]
    for f in ups:
        assert f.header.receiver == "assist_trainer"
        assert not any("weight" in k.lower() for k in f.meta), f.meta   # nothing beside the tensors
        assert set(f.tensors) == {"mean", "__weight__"}
        assert all(t.dtype == np.uint64 for t in f.tensors.values())
    # weighting "index": node-1 weighs 1, node-2 weighs 2 (x 2^32 in fixed point). Neither upload
    # shows its own weight, yet the pads cancel in the sum.
    one = 1 << 32
    for r in range(PARAMS["rounds"]):
        w = {f.header.sender: int(f.tensors["__weight__"]) for f in ups if f.header.channel == f"agg/{r}/up"}
        assert w["node-1"] != one and w["node-2"] != 2 * one
        assert (w["node-1"] + w["node-2"]) % (1 << 64) == 3 * one


def test_swapped_dh_value_fails_the_signed_job_naming_the_pair(mitm):
    fed, attacker, pin = mitm
    with attack(attacker, pin, "swap_one", pinned=True):
        job = run_job(fed)
    assert job.state.value == "FAILED", job
    assert "signature does not verify" in job.reason and "node-1 -> node-2" in job.reason, job.reason
    assert job.node == "node-2"
    assert "\n" not in job.reason


def test_replayed_signed_dh_value_from_an_earlier_job_fails_naming_the_pair(mitm):
    fed, attacker, pin = mitm
    pin(True)
    if ("node-1", "node-2") not in attacker.last_signed:  # run alone: record one genuine exchange first
        attacker.mode = "observe"
        assert run_job(fed).state.value == "SUCCESSFUL"
    with attack(attacker, pin, "replay", pinned=True):
        job = run_job(fed)
    assert job.state.value == "FAILED", job
    assert "signature does not verify" in job.reason and "node-1 -> node-2" in job.reason, job.reason


def test_swapped_dh_value_without_identities_is_not_recognised(mitm):
    fed, attacker, pin = mitm
    with attack(attacker, pin, "swap_one", pinned=False):
        job = run_job(fed)
    # the pads no longer cancel: the decoded sum (weights included) is random. Without identities xfed
    # cannot tell a swapped DH value from any other tampering: the root sees masks that do not cancel
    # (a total weight that decodes to garbage), or horizontal_mean's known-answer check (which a real
    # training job does not have) catches the wrong mean.
    assert job.state.value == "FAILED", job
    assert ("aggregate differs from the expected mean" in job.reason
            or "total aggregation weight is" in job.reason
            or "masked uploads do not cancel" in job.reason), job.reason
    assert "signature" not in job.reason and "DH" not in job.reason


def test_full_mitm_without_identities_reads_every_update_and_the_job_succeeds(mitm):
    from xfed.operators.horizontal_mean.operator import contribution

    fed, attacker, pin = mitm
    attacker.recovered = {}
    with attack(attacker, pin, "mitm", pinned=False):
        job = run_job(fed)
    assert job.state.value == "SUCCESSFUL", (job, fed.logs())
    assert sorted(attacker.recovered) == [(n, r) for n in TRAINERS for r in range(PARAMS["rounds"])]
    for (node, r), got in attacker.recovered.items():
        want = contribution(PARAMS["seed"], node, r, PARAMS["dim"]).astype(np.float64)
        assert np.max(np.abs(got - want)) < 1e-6, (node, r)


def test_full_mitm_with_identities_fails_before_any_update_is_sent(mitm):
    """Here the broker also drops the signatures (a downgrade to "no identities"): refused as unsigned."""
    fed, attacker, pin = mitm
    attacker.frames, attacker.recovered = [], {}
    with attack(attacker, pin, "mitm", pinned=True, strip_signatures=True):
        job = run_job(fed)
    assert job.state.value == "FAILED", job
    assert "unsigned, but identities are pinned" in job.reason and " -> " in job.reason, job.reason
    assert attacker.uploads() == [] and attacker.recovered == {}


def test_a_node_holding_the_wrong_identity_key_fails_the_job_naming_itself(mitm):
    from xfed.security.identity import default_key_path, generate, write_private_key

    fed, attacker, pin = mitm
    pin(True)
    path = default_key_path(fed.config, "node-2")
    saved = path.read_bytes()
    path.unlink()
    write_private_key(generate("node-2"), path)   # not the key fed_conf.json pins
    try:
        job = run_job(fed)
    finally:
        path.unlink()
        path.write_bytes(saved)
    assert job.state.value == "FAILED" and job.node == "node-2", job
    assert "does not match fed_conf.json identities['node-2']" in job.reason and "\n" not in job.reason, job.reason
