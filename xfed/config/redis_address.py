"""`redis_server` parsed without importing redis: "embedded", host:port, redis://, rediss://, unix://."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

DEFAULT_PORT = 6379


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is; `kind` is embedded | tcp | unix. The password never appears in repr/display."""

    kind: Literal["embedded", "tcp", "unix"]
    host: str | None = None
    port: int | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    unix_socket: str | None = None

    @property
    def embedded(self) -> bool:
        return self.kind == "embedded"

    def display(self) -> str:
        if self.kind == "embedded":
            return "embedded"
        user = f"{self.username}@" if self.username else ""
        if self.kind == "unix":
            return f"unix://{user}{self.unix_socket}"
        return f"{'rediss' if self.tls else 'redis'}://{user}{self.host}:{self.port}/{self.db}"

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `redis.Redis(...)` (TLS files come from RedisOptions)."""
        if self.kind == "embedded":
            raise ValueError("the embedded server's address is known only once it runs")
        kw: dict[str, Any] = {"db": self.db, "username": self.username, "password": self.password}
        if self.kind == "unix":
            kw["unix_socket_path"] = self.unix_socket
        else:
            kw.update(host=self.host, port=self.port, ssl=self.tls)
        return kw


def parse_redis_server(spec: Any) -> RedisAddress:
    """Parse a `redis_server` value; ValueError with a one-line reason when it is not one."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("must be \"embedded\", \"host:port\" or a redis://, rediss:// or unix:// URL")
    text = spec.strip()
    if text.lower() == "embedded":
        return RedisAddress(kind="embedded")
    if "://" not in text:
        return _host_port(text)
    url = urlsplit(text)
    scheme = url.scheme.lower()
    if scheme == "unix":
        if not url.path:
            raise ValueError("unix:// needs a socket path, e.g. unix:///run/redis.sock")
        return RedisAddress(kind="unix", unix_socket=url.path, username=_unq(url.username),
                            password=_unq(url.password), db=_db(url.query.removeprefix("db=") or "0"))
    if scheme not in ("redis", "rediss"):
        raise ValueError(f"scheme {url.scheme!r} is not redis://, rediss:// or unix://")
    if not url.hostname:
        raise ValueError("the URL has no host")
    try:
        port = url.port or DEFAULT_PORT
    except ValueError:
        raise ValueError("the port is not a number between 1 and 65535") from None
    if not 0 < port < 65536:
        raise ValueError("the port is not a number between 1 and 65535")
    return RedisAddress(kind="tcp", host=url.hostname, port=port, db=_db(url.path.lstrip("/") or "0"),
                        username=_unq(url.username), password=_unq(url.password), tls=scheme == "rediss")


def _host_port(text: str) -> RedisAddress:
    if text.startswith("["):  # [ipv6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":") or str(DEFAULT_PORT)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" not in text:
        host, port_text = text, str(DEFAULT_PORT)
    else:
        raise ValueError("write an IPv6 address as [addr]:port")
    if not host or any(c in host for c in "/@ "):
        raise ValueError("is not \"embedded\", \"host:port\" or a redis://, rediss:// or unix:// URL")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port {port_text!r} is not a number between 1 and 65535")
    return RedisAddress(kind="tcp", host=host, port=int(port_text))


def _db(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"database {text!r} is not a number")
    return int(text)


def _unq(value: str | None) -> str | None:
    return unquote(value) if value else None
