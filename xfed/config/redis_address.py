"""`redis_server` parsed without importing redis: "embedded", host:port, redis://, rediss://, unix://.

The one parser of a Redis address: `xfed validate` and the broker read the same `RedisAddress`
(FedConf.redis_address adds the `redis` options: credentials and TLS files).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from xfed.errors import ConfigError

DEFAULT_PORT = 6379
_FORMS = "is not \"embedded\", \"host:port\" or a redis://, rediss:// or unix:// URL"


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
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def parse(cls, spec: Any, *, ca_file: str | None = None, cert_file: str | None = None,
              key_file: str | None = None) -> RedisAddress:
        """`parse_redis_server` with TLS files; ConfigError naming the value when it is not an address.

        A host:port given with a CA or client certificate means TLS (an admin URL on the command line).
        """
        try:
            address = parse_redis_server(spec)
        except ValueError as err:
            raise ConfigError(f"redis_server {spec!r}: {err}") from None
        return address.with_tls_files(ca_file=ca_file, cert_file=cert_file, key_file=key_file,
                                      implies_tls=address.kind == "tcp")

    def with_tls_files(self, *, ca_file: str | None, cert_file: str | None, key_file: str | None,
                       implies_tls: bool = False) -> RedisAddress:
        tls = self.tls or (implies_tls and bool(ca_file or cert_file))
        return replace(self, tls=tls, ca_file=ca_file or None, cert_file=cert_file or None,
                       key_file=key_file or None)

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
        """Keyword arguments for `redis.Redis(...)`."""
        if self.kind == "embedded":
            raise ValueError("the embedded server's address is known only once it runs")
        kw: dict[str, Any] = {"db": self.db, "username": self.username, "password": self.password}
        if self.kind == "unix":
            kw["unix_socket_path"] = self.unix_socket
            return kw
        kw.update(host=self.host, port=self.port)
        if self.tls:
            kw.update(ssl=True, ssl_ca_certs=self.ca_file, ssl_certfile=self.cert_file, ssl_keyfile=self.key_file)
            if not self.ca_file:
                kw["ssl_cert_reqs"] = "required"  # the system trust store
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
    if " " in url.hostname:
        raise ValueError(f"host {url.hostname!r} contains a space")
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
        raise ValueError(_FORMS)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port {port_text!r} is not a number between 1 and 65535")
    return RedisAddress(kind="tcp", host=host, port=int(port_text))


def _db(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"database {text!r} is not a number")
    return int(text)


def _unq(value: str | None) -> str | None:
    return unquote(value) if value else None
