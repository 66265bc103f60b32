"""`redis_server` parsed without importing redis: "embedded", host:port, redis://, rediss://, unix://,
redis+cluster:// and redis+sentinel:// (rediss+... for TLS).

The one parser of a Redis address: `xfed validate` and the broker read the same `RedisAddress`
(FedConf.redis_address adds the `redis` options: credentials and TLS files). A query key a form
does not understand is refused with its name, never dropped (`?cluster=true` on a redis:// URL
used to validate and then connect to one node).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

from xfed.errors import ConfigError

DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
_FORMS = ("is not \"embedded\", \"host:port\" or a redis://, rediss://, unix://, redis+cluster:// or "
          "redis+sentinel:// URL")
_MUST = ("must be \"embedded\", \"host:port\" or a redis://, rediss://, unix://, redis+cluster://h1:p1,h2:p2 or "
         "redis+sentinel://h1:p1,h2:p2/master_name URL")
_MULTI = ("redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel")
_SCHEMES = ("redis", "rediss", "unix", *_MULTI)
# what each form's query may say; anything else is refused by name
_QUERY_KEYS: dict[str, frozenset[str]] = {
    "redis": frozenset({"db"}), "rediss": frozenset({"db"}), "unix": frozenset({"db"}),
    "redis+cluster": frozenset(), "rediss+cluster": frozenset(),
    "redis+sentinel": frozenset({"db", "sentinel_username", "sentinel_password"}),
    "rediss+sentinel": frozenset({"db", "sentinel_username", "sentinel_password"}),
}
_MASTER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

Kind = Literal["embedded", "tcp", "unix", "cluster", "sentinel"]


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is; `kind` is embedded | tcp | unix | cluster | sentinel. The password never appears
    in repr/display.

    cluster: `nodes` are start-up nodes (any reachable one tells the client the whole cluster);
    sentinel: `nodes` are the sentinels, `master_name` the monitored master they are asked for. For
    both, `host`/`port` repeat the first node (for messages).
    """

    kind: Kind
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
    nodes: tuple[tuple[str, int], ...] = ()
    master_name: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, spec: Any, *, ca_file: str | None = None, cert_file: str | None = None,
              key_file: str | None = None) -> RedisAddress:
        """`parse_redis_server` with TLS files; ConfigError naming the value when it is not an address.

        A host:port given with a CA or client certificate means TLS (an admin URL on the command line).
        """
        try:
            address = parse_redis_server(spec)
        except ValueError as err:
            raise ConfigError(f"redis_server {_redacted(spec)!r}: {err}") from None
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

    @property
    def hosts(self) -> list[str]:
        """Every host name this address reaches (one, or a cluster's/sentinels' list)."""
        if self.nodes:
            return [h for h, _ in self.nodes]
        return [self.host] if self.host else []

    def display(self) -> str:
        return self.url(with_password=False)

    def url(self, *, with_password: bool = True) -> str:
        """The address as a redis_server string (user, and the password only when asked for)."""
        if self.kind == "embedded":
            return "embedded"
        user = ""
        if self.username or (with_password and self.password):
            user = quote(self.username or "", safe="")
            if with_password and self.password:
                user += ":" + quote(self.password, safe="")
            user += "@"
        if self.kind == "unix":
            return f"unix://{user}{self.unix_socket}" + (f"?db={self.db}" if self.db else "")
        tls = "rediss" if self.tls else "redis"
        if self.kind == "tcp":
            return f"{tls}://{user}{_join_host(self.host, self.port)}/{self.db}"
        hosts = ",".join(_join_host(h, p) for h, p in self.nodes)
        if self.kind == "cluster":
            return f"{tls}+cluster://{user}{hosts}"
        query = [f"db={self.db}"] if self.db else []
        if self.sentinel_username:
            query.append(f"sentinel_username={quote(self.sentinel_username, safe='')}")
        if with_password and self.sentinel_password:
            query.append(f"sentinel_password={quote(self.sentinel_password, safe='')}")
        return f"{tls}+sentinel://{user}{hosts}/{self.master_name}" + ("?" + "&".join(query) if query else "")

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `redis.Redis(...)` (tcp/unix), or for every node's connection
        (cluster: no db, no host; sentinel: the master's connections)."""
        if self.kind == "embedded":
            raise ValueError("the embedded server's address is known only once it runs")
        kw: dict[str, Any] = {"username": self.username, "password": self.password}
        if self.kind != "cluster":
            kw["db"] = self.db
        if self.kind == "unix":
            kw["unix_socket_path"] = self.unix_socket
            return kw
        if self.kind == "tcp":
            kw.update(host=self.host, port=self.port)
        kw.update(self.tls_kwargs())
        return kw

    def tls_kwargs(self) -> dict[str, Any]:
        if not self.tls:
            return {}
        kw: dict[str, Any] = dict(ssl=True, ssl_ca_certs=self.ca_file, ssl_certfile=self.cert_file,
                                  ssl_keyfile=self.key_file)
        if not self.ca_file:
            kw["ssl_cert_reqs"] = "required"  # the system trust store
        return kw


def _join_host(host: str | None, port: int | None) -> str:
    host = host or ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _redacted(spec: Any) -> Any:
    """The spec for an error message, a URL's password replaced by ***."""
    if isinstance(spec, str) and "://" in spec and "@" in spec:
        scheme, rest = spec.split("://", 1)
        userinfo, _, hosts = rest.partition("/")[0].rpartition("@")
        if ":" in userinfo:
            return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{hosts}" + rest[len(rest.partition('/')[0]):]
    return spec


def parse_redis_server(spec: Any) -> RedisAddress:
    """Parse a `redis_server` value; ValueError with a one-line reason when it is not one."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(_MUST)
    text = spec.strip()
    if text.lower() == "embedded":
        return RedisAddress(kind="embedded")
    if "://" not in text:
        return _host_port(text)
    scheme = text.split("://", 1)[0].lower()
    if scheme in _MULTI:
        return _multi_host(text, scheme)
    if scheme not in _SCHEMES:
        raise ValueError(f"scheme {scheme!r} is not redis://, rediss://, unix://, redis+cluster:// or "
                         "redis+sentinel:// (rediss+cluster://, rediss+sentinel:// for TLS)")
    url = urlsplit(text)
    if url.fragment:
        raise ValueError("the URL has a '#' part; percent-encode a '#' in a password as %23")
    query = _query(url.query, scheme)
    if scheme == "unix":
        if not url.path:
            raise ValueError("unix:// needs a socket path, e.g. unix:///run/redis.sock")
        return RedisAddress(kind="unix", unix_socket=url.path, username=_unq(url.username),
                            password=_unq(url.password), db=_db(query.get("db", "0")))
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
    path_db = url.path.lstrip("/")
    if path_db and "db" in query:
        raise ValueError("the database is given twice (in the path and as ?db=)")
    return RedisAddress(kind="tcp", host=url.hostname, port=port, db=_db(path_db or query.get("db", "0")),
                        username=_unq(url.username), password=_unq(url.password), tls=scheme == "rediss")


def _multi_host(text: str, scheme: str) -> RedisAddress:
    """redis+cluster://[user[:pw]@]h:p,h:p[/][?...] and redis+sentinel://[user[:pw]@]h:p,h:p/master[?...].

    Parsed by hand: urlsplit takes one host only."""
    kind = "cluster" if scheme.endswith("+cluster") else "sentinel"
    rest = text.split("://", 1)[1]
    if "#" in rest:
        raise ValueError("the URL has a '#' part; percent-encode a '#' in a password as %23")
    rest, _, query_text = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user_text, _, pw_text = userinfo.partition(":")
        username, password = _unq(user_text), _unq(pw_text)
    default_port = DEFAULT_PORT if kind == "cluster" else DEFAULT_SENTINEL_PORT
    nodes = tuple(_node(h, default_port) for h in hosts.split(","))
    if len(set(nodes)) != len(nodes):
        raise ValueError("a host:port is listed twice")
    query = _query(query_text, scheme)
    if kind == "cluster":
        if path.strip("/") not in ("", "0"):
            raise ValueError(f"a Redis Cluster has only database 0; remove the path {('/' + path)!r}")
        return RedisAddress(kind="cluster", host=nodes[0][0], port=nodes[0][1], nodes=nodes, username=username,
                            password=password, tls=scheme.startswith("rediss"))
    name = unquote(path.strip("/")) if slash else ""
    if not name:
        raise ValueError(f"{scheme}:// needs the master's name as its path, e.g. {scheme}://h1:26379,h2:26379/mymaster")
    if not _MASTER_RE.match(name):
        raise ValueError(f"master name {name!r}: use letters, digits, '_', '.', '-' (up to 64)")
    return RedisAddress(kind="sentinel", host=nodes[0][0], port=nodes[0][1], nodes=nodes, master_name=name,
                        db=_db(query.get("db", "0")), username=username, password=password,
                        tls=scheme.startswith("rediss"), sentinel_username=query.get("sentinel_username") or None,
                        sentinel_password=query.get("sentinel_password") or None)


def _query(text: str, scheme: str) -> dict[str, str]:
    """The URL's query as {key: value}; a key this form does not understand is refused, never dropped."""
    known = _QUERY_KEYS[scheme]
    out: dict[str, str] = {}
    for part in text.split("&") if text else []:
        key, eq, value = part.partition("=")
        key = unquote(key)
        if key not in known:
            what = f"known: {', '.join(sorted(known))}" if known else "it takes none"
            raise ValueError(f"unknown query key {key!r} for {scheme}:// ({what})")
        if not eq:
            raise ValueError(f"query key {key!r} has no value (write {key}=...)")
        if key in out:
            raise ValueError(f"query key {key!r} is given twice")
        out[key] = unquote(value)
    return out


def _node(text: str, default_port: int) -> tuple[str, int]:
    text = text.strip()
    if not text:
        raise ValueError("an empty host in the host list (h1:p1,h2:p2)")
    address = _host_port(text, default_port)
    return address.host, address.port


def _host_port(text: str, default_port: int = DEFAULT_PORT) -> RedisAddress:
    if text.startswith("["):  # [ipv6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":") or str(default_port)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" not in text:
        host, port_text = text, str(default_port)
    else:
        raise ValueError("write an IPv6 address as [addr]:port")
    if not host or any(c in host for c in "/@ ,?#"):
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
