"""Redis 7 ACL users for one federation: one per node, one for the scheduler, one for the client.

Each node's user may read (and XDEL from) only its own mailboxes and append to other nodes'
mailboxes only as sender = itself (`Keys.node_acl_selectors`); the scheduler may not read any
mailbox (it only deletes them when a job ends); the client may only post requests and read job
state, events and the node registry. Every user gets an explicit list of commands: those the xfed
code sends plus a few stream/hash housekeeping commands on the same keys (the ACL integration test
runs a whole job and asserts `ACL LOG` stays empty, so a new command in broker code shows up
there), never a keyless command that could reach other keys (`KEYS`, `FLUSHALL`, `SCAN` except for
the scheduler, `CONFIG` ...).

Passwords never appear in clear in what is applied or printed as an ACL file: rules carry the
SHA-256 of the password (``#<hex>``); only the per-user connection URLs contain the password.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import quote

import redis

from xfed.broker.keys import Keys, check_id
from xfed.errors import BrokerError, ConfigError

SCHEDULER_USER = "scheduler"
CLIENT_USER = "client"

# connection set-up (AUTH/HELLO/PING/SELECT/CLIENT SETNAME ...) minus every admin or dangerous
# subcommand (CLIENT KILL/LIST/PAUSE ...)
_BASE = ("-@all", "+@connection", "-@admin", "-@dangerous")
# what a cluster client runs to learn the topology and follow redirections (without CLUSTER SLOTS
# redis-py reports the misleading "Cluster mode is not enabled on this node"); harmless elsewhere
_TOPOLOGY_CMDS = ("cluster|slots", "cluster|shards", "cluster|nodes", "cluster|myid", "readonly", "readwrite",
                  "asking", "command")
_NODE_CMDS = _TOPOLOGY_CMDS + (
    # data plane (Comm): append, refresh TTL, read own mailboxes, delete what was consumed
    "xadd", "expire", "pexpire", "xread", "xdel", "xlen",
    # a published payload and the headers pointing at it land together (one MULTI/EXEC)
    "multi", "exec", "discard",
    # command stream (consumer group), job state, events, heartbeat + registry
    "xgroup|create", "xgroup|createconsumer", "xgroup|setid", "xreadgroup", "xack", "xpending", "xautoclaim",
    "xclaim", "xinfo|stream", "xrevrange", "xrange", "hget", "hgetall", "hmget", "hset", "sadd", "set", "get",
    "del", "exists", "hexists", "pttl", "ttl",
    # the heartbeat lease (renewed only while it is ours): a Lua script,
    # whose every key access is still checked against this user's key patterns
    "evalsha", "script|load",
)
# the scheduler runs where the federation's operator runs it: a wider list of plain data commands
# (still confined to its key patterns), so a small change in the control plane does not lock it out
_SCHEDULER_CMDS = _NODE_CMDS + (
    "incr", "incrby", "zadd", "zrange", "zrem", "zrevrange", "zscore", "zcard", "smembers", "sismember",
    "srem", "rpush", "lpush", "lrange", "llen", "scan", "multi", "exec", "discard", "watch", "unwatch",
    "eval", "script|exists", "hdel", "hsetnx", "hexists", "hkeys", "type",
    "persist", "xtrim",
)
_CLIENT_CMDS = _TOPOLOGY_CMDS + ("xadd", "xread", "xrevrange", "blpop", "pttl", "hget", "hgetall", "hmget",
                                 "zrange", "zrevrange", "zrem", "smembers", "exists")


@dataclass(frozen=True)
class AclUser:
    """One Redis ACL user: name, the xfed identity it stands for, its key patterns and commands."""

    name: str
    role: str                       # "node" | "scheduler" | "client"
    subject: str                    # node id, "scheduler" or "client"
    password: str = field(repr=False)
    keys: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()

    @property
    def password_hash(self) -> str:
        return hashlib.sha256(self.password.encode()).hexdigest()

    def rules(self) -> list[str]:
        """ACL SETUSER rules after the user name (hashed password; channels none; keys; commands)."""
        return ["on", f"#{self.password_hash}", "resetchannels", "resetkeys", *self.keys,
                *_BASE, *(f"+{c}" for c in self.commands)]

    def setuser_args(self) -> list[str]:
        """Arguments of ``ACL SETUSER``: ``reset`` first, so re-applying replaces the old rules."""
        return [self.name, "reset", *self.rules()]

    def acl_file_line(self) -> str:
        return " ".join(["user", self.name, *self.rules()])

    def url(self, host: str, port: int, *, db: int = 0, tls: bool = False) -> str:
        """The redis_server URL this user's process puts in its own fed_conf.json."""
        auth = f"{quote(self.name, safe='')}:{quote(self.password, safe='')}@"
        return f"{'rediss' if tls else 'redis'}://{auth}{_host(host)}:{int(port)}/{int(db)}"


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def user_name(namespace: str, subject: str) -> str:
    """ACL user name for `subject` in `namespace`: namespaced, so federations can share one server."""
    return f"{namespace}-{subject}"


def scheduler_selectors(keys: Keys) -> list[str]:
    """Everything of the control plane; mailboxes write-only (deleted when a job ends, never read)."""
    ns = keys.namespace
    return [f"~{ns}:requests", f"~{ns}:job_counter", f"~{ns}:jobs", f"~{ns}:job:{{*}}",
            f"~{ns}:job:{{*}}:events", f"~{ns}:job:{{*}}:signal", f"%W~{ns}:job:{{*}}:s:*",
            f"%W~{ns}:job:{{*}}:p:*", f"~{ns}:node:{{*}}:*", f"~{ns}:nodes",
            f"~{ns}:scheduler", f"~{ns}:reply:*"]


def client_selectors(keys: Keys) -> list[str]:
    """Post requests, read answers, job state and events, the node registry; no mailbox at all."""
    ns = keys.namespace
    return [f"%W~{ns}:requests", f"~{ns}:reply:*", f"%R~{ns}:scheduler", f"%R~{ns}:job:{{*}}",
            f"%R~{ns}:job:{{*}}:events", f"%W~{ns}:job:{{*}}:signal", f"~{ns}:jobs", f"%R~{ns}:nodes", f"%R~{ns}:node:{{*}}:hb",
            f"%R~{ns}:node:{{*}}:info"]


def federation_users(namespace: str, node_ids: Iterable[str],
                     passwords: Mapping[str, str] | None = None) -> list[AclUser]:
    """One user per node, then the scheduler's and the client's; passwords from `passwords` by user
    name, else freshly generated (secrets.token_urlsafe, 192 bits)."""
    keys = Keys(namespace)
    passwords = dict(passwords or {})
    nodes = [check_id("node id", n) for n in node_ids]
    if len(set(nodes)) != len(nodes):
        raise ConfigError(f"node ids are not unique: {nodes}")
    clash = sorted({SCHEDULER_USER, CLIENT_USER} & set(nodes))
    if clash:
        raise ConfigError(f"node id {clash[0]!r} would share its ACL user with xfed's {clash[0]}; rename the node")

    def pw(name: str) -> str:
        value = passwords.get(name)
        if value is None:
            return secrets.token_urlsafe(24)
        if not isinstance(value, str) or len(value) < 16 or any(c.isspace() for c in value):
            raise ConfigError(f"password of ACL user {name!r}: needs at least 16 characters and no spaces")
        return value

    users = []
    for node in nodes:
        name = user_name(namespace, node)
        users.append(AclUser(name, "node", node, pw(name), tuple(keys.node_acl_selectors(node)), _NODE_CMDS))
    name = user_name(namespace, SCHEDULER_USER)
    users.append(AclUser(name, "scheduler", SCHEDULER_USER, pw(name), tuple(scheduler_selectors(keys)),
                         _SCHEDULER_CMDS))
    name = user_name(namespace, CLIENT_USER)
    users.append(AclUser(name, "client", CLIENT_USER, pw(name), tuple(client_selectors(keys)), _CLIENT_CMDS))
    return users


def users_for_fed(fed: Any, passwords: Mapping[str, str] | None = None) -> list[AclUser]:
    """`federation_users` for a loaded FedConf (namespace from `redis.namespace`, nodes from fed_info)."""
    return federation_users(fed.redis.namespace, fed.node_ids, passwords)


def acl_file(users: Iterable[AclUser]) -> str:
    """The users as lines of a Redis ACL file (``aclfile`` in redis.conf; hashed passwords)."""
    return "".join(u.acl_file_line() + "\n" for u in users)


def data_nodes(r: Any) -> list[tuple[str, Callable[..., Any]]]:
    """Every server that holds the federation's data, as (name, run a command there). ACL users are
    not replicated: a cluster needs them on every node (replicas too: one may become a master), a
    Sentinel set-up on the master and each replica."""
    from redis.cluster import RedisCluster

    if isinstance(r, RedisCluster):
        nodes = [(n.name, functools.partial(r.execute_command, target_nodes=n)) for n in r.get_nodes()]
        # the client knows the masters only; replicas come from CLUSTER NODES (failed ones skipped)
        kw = {k: v for k, v in r.nodes_manager.connection_kwargs.items()
              if k in ("username", "password", "socket_timeout", "socket_connect_timeout", "ssl", "ssl_ca_certs",
                       "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")}
        known = {name for name, _ in nodes}
        for name, info in sorted((r.cluster_nodes() or {}).items()):
            name = name.split("@")[0]
            flags = str(info.get("flags", ""))
            if name in known or "fail" in flags or "noaddr" in flags or not info.get("connected", True):
                continue
            host, _, port = name.rpartition(":")
            nodes.append((name, redis.Redis(host=host.strip("[]"), port=int(port), **kw).execute_command))
        return nodes
    pool = r.connection_pool
    nodes: list[tuple[str, Callable[..., Any]]] = [("master" if hasattr(pool, "sentinel_manager") else "server",
                                                    r.execute_command)]
    if hasattr(pool, "sentinel_manager"):
        kw = {k: v for k, v in pool.connection_kwargs.items() if k not in ("connection_class", "retry")}
        if "SSL" in getattr(pool.connection_kwargs.get("connection_class"), "__name__", ""):
            kw["ssl"] = True
        for host, port in pool.sentinel_manager.discover_slaves(pool.service_name):
            nodes.append((f"{host}:{port}", redis.Redis(host=host, port=port, **kw).execute_command))
    return nodes


def apply_users(r: redis.Redis, users: Iterable[AclUser], *, save: bool = False) -> list[str]:
    """``ACL SETUSER`` every user on `r` (an admin connection) and, for a cluster or a Sentinel
    set-up, on every other node (`data_nodes`); optionally ``ACL SAVE`` on each.

    Returns the user names. BrokerError naming the user (and node) when a server refuses a rule
    (e.g. a server older than Redis 7, which has no %R~/%W~ key permissions).
    """
    users = list(users)
    names = [u.name for u in users]
    nodes = data_nodes(r)
    for node, run in nodes:
        where = f" on {node}" if len(nodes) > 1 else ""
        for user in users:
            try:
                run("ACL", "SETUSER", *user.setuser_args())
            except redis.ResponseError as exc:
                raise BrokerError(f"ACL SETUSER {user.name}{where} refused: {exc} (Redis 7 or newer is required)") from None
            except redis.RedisError as exc:
                raise BrokerError(f"ACL SETUSER {user.name}{where}: {type(exc).__name__}: {exc}") from None
        if save:
            try:
                run("ACL", "SAVE")
            except redis.ResponseError as exc:
                raise BrokerError(f"ACL SAVE{where} refused: {exc} (start redis-server with an aclfile to persist "
                                  "users)") from None
    return names


def verify_users(r: redis.Redis, users: Iterable[AclUser], namespace: str) -> list[str]:
    """Ask the server (``ACL DRYRUN``, nothing runs) whether the applied users hold xfed's promises:
    each node reads its own mailbox but not a peer's, writes as itself but not as a peer. Returns
    the broken promises (empty when all hold)."""
    keys = Keys(namespace)
    nodes = [u for u in users if u.role == "node"]
    problems = []
    for u in nodes:
        peer = next((p.subject for p in nodes if p is not u), "xfed-probe-peer")
        checks = [
            (["XREAD", "STREAMS", keys.mailbox("0", 0, u.subject, peer), "0"], True, "read its own mailbox"),
            (["XADD", keys.mailbox("0", 0, peer, u.subject), "*", "d", "x"], True, f"write to {peer} as itself"),
            (["XREAD", "STREAMS", keys.mailbox("0", 0, peer, u.subject), "0"], False, f"read {peer}'s mailbox"),
            # into a third party's mailbox: its own inbox it may fill as it likes (that fools only itself)
            (["XADD", keys.mailbox("0", 0, "xfed-probe-other", peer), "*", "d", "x"], False, f"write as {peer}"),
            (["FLUSHALL"], False, "run FLUSHALL"),
        ]
        for cmd, allowed, what in checks:
            try:
                got = r.execute_command("ACL", "DRYRUN", u.name, *cmd)
            except redis.ResponseError as exc:
                problems.append(f"{u.name}: cannot check whether it may {what}: {exc}")
                continue
            if (_text(got) == "OK") != allowed:
                problems.append(f"{u.name} {'cannot' if allowed else 'can'} {what}")
    return problems


def default_user_open(r: redis.Redis) -> bool:
    """True when the server's `default` user is on without a password (then ACL users protect nothing)."""
    try:
        info = r.execute_command("ACL", "GETUSER", "default")
    except redis.RedisError:
        return False
    if isinstance(info, (list, tuple)):
        info = dict(zip(info[0::2], info[1::2], strict=False))
    info = info or {}
    flags = {_text(f) for f in info.get(b"flags") or info.get("flags") or []}
    return "on" in flags and "nopass" in flags


def denied_log(r: redis.Redis, count: int = 128) -> list[dict[str, str]]:
    """``ACL LOG`` entries (denied commands/keys) as {field: text} dicts, newest first (every node's,
    one after the other, on a cluster or a Sentinel set-up)."""
    out = []
    entries = [e for _, run in data_nodes(r) for e in (run("ACL", "LOG", str(int(count))) or [])]
    for entry in entries:
        if isinstance(entry, dict):
            items = entry.items()
        else:
            items = zip(entry[0::2], entry[1::2], strict=False)
        out.append({_text(k): _text(v) for k, v in items})
    return out


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
