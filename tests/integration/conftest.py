"""A federation of real processes for orchestration tests: scheduler + daemons as `python xfed.py` subprocesses.

Everything is started by pid and stopped by pid (never by name); daemons log to files in the tmp
folder, which a failing test prints.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
INTERVAL = 0.5  # short heartbeats keep failure detection (3 intervals) fast in tests


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie of ours: reap it, it is dead
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        pass
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

    def write_config(self, params: dict[str, Any] | None = None, *, per_node: dict[str, dict] | None = None,
                     stages: int = 1) -> None:
        self.config.mkdir(parents=True, exist_ok=True)
        fed = {"fed_info": {"scheduler": {"scheduler": "localhost:0"},
                            "trainer": {t: "localhost:0" for t in self.trainers},
                            "assist_trainer": {self.assist: "localhost:0"}},
               "redis_server": self.redis.address, "redis": {"namespace": self.namespace},
               "heartbeat_interval": self.interval}
        (self.config / "fed_conf.json").write_text(json.dumps(fed, indent=1))
        params = params or {"rounds": 3, "dim": 8}
        for n in self.nodes:
            p = (per_node or {}).get(n, params)
            ident = "assist_trainer" if n == self.assist else "label_trainer"
            out = str(self.root / "out" / "[JOB_ID]" / "[NODE_ID]")
            (self.config / f"trainer_config_{n}.json").write_text(
                json.dumps(stage_config(ident, p, out) * stages, indent=1))

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", XFED_WORK_DIR=str(self.root / "work"),
                   PYTHONUNBUFFERED="1")
        return env

    def spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, str(REPO / "xfed.py"), *args, "--config_path", str(self.config)],
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

    def client(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(REPO / "xfed.py"), *args, "--config_path", str(self.config)],
                              capture_output=True, text=True, env=self.env(), cwd=self.root, timeout=timeout)

    def redis_client(self):
        return self.redis.client()

    def keys(self):
        from xfed.broker.keys import Keys

        return Keys(self.namespace)

    def store(self):
        from xfed.broker.jobstore import JobStore

        return JobStore(self.redis_client(), self.keys())

    def wait_alive(self, nodes: list[str], timeout: float = 30) -> None:
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
                 timeout: float = 40):
        store = self.store()
        deadline = time.monotonic() + timeout
        while True:
            job = store.get(job_id)
            if job is not None and job.state.value in states:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} not in {states} after {timeout} s: {job}\n{self.logs()}")
            time.sleep(0.05)

    def wait_for(self, predicate, what: str, timeout: float = 20):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.logs()}")
            time.sleep(0.05)

    def log(self, name: str) -> str:
        p = self.root / f"{name}.log"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {n} ---\n{self.log(n)}" for n in self.procs)

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(timeout=5)

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


def _redis_server_class():
    # tests/conftest.py is loaded by pytest as a conftest, not importable as a module under
    # --import-mode=importlib; load the class from its file.
    import importlib.util

    spec = importlib.util.spec_from_file_location("xfed_tests_root_conftest", REPO / "tests" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("xfed_tests_root_conftest", mod)
    spec.loader.exec_module(mod)
    return mod.RedisServer


@pytest.fixture(scope="module")
def fed(tmp_path_factory) -> Iterator[Federation]:
    """Redis + scheduler + assist trainer + 2 trainers (real subprocesses), shared by one module's tests."""
    RedisServer = _redis_server_class()
    root = tmp_path_factory.mktemp("fed")
    srv = RedisServer(dir=root)
    srv.start()
    f = Federation(root=root, redis=srv)
    f.write_config()
    try:
        f.start_all()
        yield f
    finally:
        f.stop_all()
        srv.stop()
