"""A federation of real processes for integration tests: scheduler + daemons as `python xfed.py` subprocesses.

Everything is started by pid and stopped by pid (never by name); daemons log to files in the tmp
folder, which a failing test prints. Test modules import from here as `tests.integration.conftest`
(pytest registers conftests under their rootdir-relative name with --import-mode=importlib).

Timeouts are generous on purpose: a passing test returns as soon as its condition holds, so only a
hang pays them, and a loaded 2-core CI machine may be many times slower than a quiet one.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import RedisServer

REPO = Path(__file__).resolve().parents[2]
INTERVAL = 0.5  # short heartbeats keep failure detection (3 intervals) fast in tests
PATIENCE = 120.0  # default seconds to wait for a condition that normally holds within a few


def load_module(name: str, path: Path):
    """A file that is not importable by name (a conftest elsewhere, a script) as module `name`, loaded once."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def pid_alive(pid: int) -> bool:
    """xfed's own check (signal 0, reaping our zombies), and a zombie we cannot reap counts as dead:
    an orphaned stage process that PID 1 has not reaped yet has exited all the same."""
    from xfed.broker.embedded import _pid_alive

    if not _pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def stage_config(identity: str, params: dict[str, Any], output: str | None = None) -> list[dict]:
    stage: dict[str, Any] = {"identity": identity, "model_info": {"name": "horizontal_mean"},
                             "train_info": {"train_params": params}}
    if output:
        stage["output"] = {"path": output}
    return [stage]


def write_json_atomically(path: Path, obj: Any) -> None:
    """Replace a config file in one step: a stage process reading it never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


@dataclass
class Federation:
    root: Path
    redis: Any
    trainers: list[str] = field(default_factory=lambda: ["node-1", "node-2"])
    assist: str = "assist_trainer"
    namespace: str = "itest"
    interval: float = INTERVAL
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def nodes(self) -> list[str]:
        return self.trainers + [self.assist]

    def config_of(self, name: str) -> Path:
        """The config folder process `name` ("scheduler", a node id, "client") runs with."""
        return self.config

    def write_config(self, params: dict[str, Any] | None = None, *, per_node: dict[str, dict] | None = None,
                     stages: int = 1, fed_extra: dict[str, Any] | None = None) -> None:
        self.config.mkdir(parents=True, exist_ok=True)
        fed = {"fed_info": {"scheduler": {"scheduler": "localhost:0"},
                            "trainer": {t: "localhost:0" for t in self.trainers},
                            "assist_trainer": {self.assist: "localhost:0"}},
               "redis_server": self.redis.address, "redis": {"namespace": self.namespace},
               "heartbeat_interval": self.interval, **(fed_extra or {})}
        write_json_atomically(self.config / "fed_conf.json", fed)
        params = params or {"rounds": 3, "dim": 8}
        for n in self.nodes:
            p = (per_node or {}).get(n, params)
            ident = "assist_trainer" if n == self.assist else "label_trainer"
            out = str(self.root / "out" / "[JOB_ID]" / "[NODE_ID]")
            write_json_atomically(self.config / f"trainer_config_{n}.json", stage_config(ident, p, out) * stages)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", XFED_WORK_DIR=str(self.root / "work"),
                   PYTHONUNBUFFERED="1")
        return env

    def spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, str(REPO / "xfed.py"), *args, "--config_path",
                                 str(self.config_of(name))],
                                stdout=log, stderr=subprocess.STDOUT, env=self.env(), cwd=self.root)
        log.close()
        self.procs[name] = proc
        return proc

    def start_scheduler(self) -> subprocess.Popen:
        return self.spawn("scheduler", "-s")

    def start_node(self, node: str) -> subprocess.Popen:
        return self.spawn(node, "-a") if node == self.assist else self.spawn(node, "-t", node)

    def start_all(self) -> None:
        self.start_scheduler()
        for n in self.nodes:
            self.start_node(n)
        self.wait_alive(self.nodes + ["scheduler"])

    def client(self, *args: str, config: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(REPO / "xfed.py"), *args, "--config_path",
                               str(config or self.config_of("client"))],
                              capture_output=True, text=True, env=self.env(), cwd=self.root, timeout=timeout)

    def redis_client(self):
        return self.redis.client()

    def keys(self):
        from xfed.broker.keys import Keys

        return Keys(self.namespace)

    def store(self):
        from xfed.broker.jobstore import JobStore

        return JobStore(self.redis_client(), self.keys())

    def wait_alive(self, nodes: list[str], timeout: float = PATIENCE) -> None:
        from xfed.broker.heartbeat import node_infos

        r, keys = self.redis_client(), self.keys()
        deadline = time.monotonic() + timeout
        while True:
            # alive *and* registered by the process we started (a killed predecessor's key lingers)
            infos = node_infos(r, keys, [n for n in nodes if n != "scheduler"])
            alive = {n for n, i in infos.items() if i.alive and (n not in self.procs or i.pid == self.procs[n].pid)}
            if "scheduler" in nodes and (r.pttl(keys.scheduler()) or 0) > 0:
                alive.add("scheduler")
            missing = [n for n in nodes if n not in alive]
            if not missing:
                return
            for name, p in self.procs.items():
                if p.poll() is not None and name in missing:
                    raise AssertionError(f"{name} exited with {p.returncode}:\n{self.log(name)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not alive after {timeout} s: {missing}\n{self.logs()}")
            time.sleep(0.05)

    def wait_job(self, job_id: str, states: tuple[str, ...] = ("SUCCESSFUL", "FAILED", "STOPPED"),
                 timeout: float = 300):
        store = self.store()
        deadline = time.monotonic() + timeout
        while True:
            job = store.get(job_id)
            if job is not None and job.state.value in states:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} not in {states} after {timeout} s: {job}\n{self.logs()}")
            time.sleep(0.05)

    def wait_for(self, predicate, what: str, timeout: float = PATIENCE):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{self.logs()}")
            time.sleep(0.05)

    def log(self, name: str) -> str:
        p = self.root / f"{name}.log"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {n} ---\n{self.log(n)}" for n in self.procs)

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(timeout=30)

    @staticmethod
    def pid_alive(pid: int) -> bool:
        return pid_alive(pid)

    def child_pids(self, job_id: str) -> dict[str, int]:
        """Stage process pid per node, as the daemons reported them."""
        job = self.store().require(job_id)
        return {n: s.pid for n, s in job.nodes.items() if s.pid}

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


@dataclass
class PartyFederation(Federation):
    """Each process runs from its own config folder parties/<name> (own fed_conf.json, own ACL user,
    as scripts/redis_acl.py writes them); the harness watches as a separate `admin` user."""

    admin_password: str = ""

    def config_of(self, name: str) -> Path:
        return self.root / "parties" / name

    party_config = config_of

    def redis_client(self):
        return self.redis.client(username="admin", password=self.admin_password)


def connected_users(admin) -> set[str]:
    """The ACL users of every connection the server holds now (CLIENT LIST)."""
    lines = admin.execute_command("CLIENT", "LIST").decode().splitlines()
    return {f.split("=", 1)[1] for line in lines for f in line.split() if f.startswith("user=")}


def _redis_server_class():
    """tests/conftest.py's RedisServer (kept for modules that load this conftest by file)."""
    return RedisServer


@contextmanager
def serve(root: Path, cls: type[Federation] = Federation, *, redis_args: list[str] | None = None,
          tls: dict | None = None, **fed_kw: Any) -> Iterator[Federation]:
    """A started redis-server in `root` and a `cls` federation on it (processes not started yet);
    on leaving, whatever was started is stopped by pid, however set-up or the tests ended."""
    srv = RedisServer(dir=root, extra_args=list(redis_args or []), tls=tls)
    fed = cls(root=root, redis=srv, **fed_kw)
    try:
        srv.start()
        yield fed
    finally:
        fed.stop_all()
        srv.stop()


@pytest.fixture(scope="module")
def fed(tmp_path_factory) -> Iterator[Federation]:
    """Redis + scheduler + assist trainer + 2 trainers (real subprocesses), shared by one module's tests."""
    with serve(tmp_path_factory.mktemp("fed")) as f:
        f.write_config()
        f.start_all()
        yield f
