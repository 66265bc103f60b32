"""The model of fed_conf.json: who takes part, where Redis is, and how nodes prove who they are.

XFL's keys are taken unchanged (`fed_info.{scheduler, trainer, assist_trainer}`, `redis_server`,
`grpc`); the addresses XFL gives each node are accepted and unused, because xfed nodes open no
ports and meet only through Redis. What xfed adds is optional: `redis`, `heartbeat_interval`,
`progress_timeout`, `max_concurrent_jobs`, `identities`.
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, field_validator, model_validator

from xfed.config.base import ConfigModel, fail
from xfed.config.redis_address import RedisAddress, parse_redis_server
from xfed.ids import ID_RE, ID_RULE

NODE_ID_RE = ID_RE
NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
ED25519_HEX_RE = re.compile(r"^[0-9a-fA-F]{64}$")
NODE_ID_RULE = f"a node id is {ID_RULE}"
# a Sentinel failover takes down-after-milliseconds + ~1-5 s; a Cluster one cluster-node-timeout (15 s
# by default) + ~2-5 s: 30 s covers both defaults with a margin
FAILOVER_WINDOW_S = 30.0


def check_node_ids(ids: dict[str, Any]) -> dict[str, Any]:
    bad = [(k,) for k in ids if not NODE_ID_RE.match(k)]
    fail("node ids", [(loc, f"bad node id {loc[0]!r}: {NODE_ID_RULE}") for loc in bad])
    return ids


class FedInfo(ConfigModel):
    """`fed_info`: the participants, keyed by node id (values are XFL's gRPC addresses, unused)."""

    scheduler: dict[str, Any] = Field(default_factory=dict, description="XFL's scheduler address; unused.")
    trainer: dict[str, Any] = Field(description="Label trainers: {node id: XFL address (unused)}.")
    assist_trainer: dict[str, Any] = Field(
        default_factory=dict, description="At most one assist trainer (the aggregator): {node id: address}.")

    @field_validator("trainer", "assist_trainer")
    @classmethod
    def _ids(cls, v: dict[str, Any]) -> dict[str, Any]:
        return check_node_ids(v)

    @model_validator(mode="after")
    def _participants(self) -> FedInfo:
        problems = []
        if not self.trainer:
            problems.append((("trainer",), "at least one trainer (label_trainer) node is required"))
        if len(self.assist_trainer) > 1:
            problems.append((("assist_trainer",),
                             f"at most one assist trainer, got {', '.join(sorted(self.assist_trainer))}"))
        for node in sorted(set(self.trainer) & set(self.assist_trainer)):
            problems.append((("assist_trainer", node), f"duplicate node id: {node!r} is also a trainer"))
        if len(self.trainer) >= 2 and not self.assist_trainer:
            problems.append((("assist_trainer",),
                             f"required with {len(self.trainer)} trainers: the assist trainer aggregates their updates"))
        fail("fed_info", problems)
        return self


class RedisOptions(ConfigModel):
    """`redis`: connection options beside `redis_server` (all optional)."""

    namespace: str = Field("xfed", description="Prefix of every key, so federations can share one server.")
    username: str | None = Field(None, description="ACL user (overrides the one in a redis:// URL).")
    password: str | None = Field(None, repr=False, description="Overrides the URL's password; prefer password_env.")
    password_env: str | None = Field(None, description="Name of an environment variable holding the password.")
    tls_ca_file: str | None = Field(None, description="CA bundle for rediss:// (default: the system store).")
    tls_cert_file: str | None = Field(None, description="Client certificate for rediss:// (mutual TLS).")
    tls_key_file: str | None = Field(None, description="Client key for rediss:// (mutual TLS).")
    embedded_dir: str | None = Field(None, description="Work folder of the embedded server (default: a folder "
                                                       "shared by the processes of this config).")
    connect_timeout: float = Field(10.0, gt=0, le=3600, description="Seconds to wait for Redis at start-up.")
    failover_window: float | None = Field(
        None, ge=0, le=3600,
        description="Seconds a Redis failover may take: every command is retried through it (connection "
                    "lost, READONLY, CLUSTERDOWN, TRYAGAIN, LOADING; at least connect_timeout in any case) "
                    "and heartbeat leases outlast it, so a failover does not count as dead nodes (the price: "
                    "a killed node is noticed only after it too). Default: 30 for redis+cluster:// and "
                    "redis+sentinel://, 0 for one server (which has no failover).")

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        if not NAMESPACE_RE.match(v):
            raise ValueError("1-64 letters, digits, '_', '.', ':', '-' (no braces: they would break hash tags)")
        return v

    @model_validator(mode="after")
    def _tls_pair(self) -> RedisOptions:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            fail("redis", [(("tls_key_file" if self.tls_cert_file else "tls_cert_file",),
                            "tls_cert_file and tls_key_file go together (mutual TLS)")])
        return self

    def resolved_password(self) -> str | None:
        """The password from `password` or from the variable `password_env` names (None if neither)."""
        import os

        if self.password_env:
            return os.environ.get(self.password_env) or self.password
        return self.password


class FedConf(ConfigModel):
    """fed_conf.json."""

    fed_info: FedInfo
    redis_server: str = Field("embedded", description='"embedded", "host:port", redis://[user[:pw]@]host:port/db, '
                                                      'rediss://... (TLS), unix:///path.sock, '
                                                      'redis+cluster://h1:p1,h2:p2 (Redis Cluster) or '
                                                      'redis+sentinel://h1:p1,h2:p2/master_name (Sentinel); '
                                                      'rediss+cluster:// and rediss+sentinel:// for TLS')
    redis: RedisOptions = Field(default_factory=RedisOptions)
    grpc: dict[str, Any] | None = Field(None, description="XFL's gRPC settings: accepted and ignored "
                                                          "(use rediss:// for transport security).")
    heartbeat_interval: float = Field(2.0, gt=0, le=3600, description="Seconds between a node's heartbeats.")
    progress_timeout: float = Field(
        300.0, gt=0, le=7 * 86400,
        description="Seconds a stage process may go without progress (a step, a poll while waiting for a peer) "
                    "before its daemon kills it and fails the job naming the node; at least 3x the slowest "
                    "step seen. Read by each daemon at every stage start.")
    max_concurrent_jobs: int = Field(
        1, ge=1, le=64,
        description="Jobs that may run at once: the scheduler refuses a start beyond it, and each daemon runs "
                    "at most this many stage processes (one per job; its own fed_conf.json counts). 1 (the "
                    "default): one job at a time.")
    identities: dict[str, str] = Field(default_factory=dict,
                                       description="{node id: Ed25519 public key, 64 hex digits} pinned per node: "
                                                   "signs the DH exchange and every data-plane message; "
                                                   "pin every node, the assist trainer included.")

    _config_dir: Path | None = PrivateAttr(default=None)

    @field_validator("redis_server")
    @classmethod
    def _redis_server(cls, v: str) -> str:
        parse_redis_server(v)  # ValueError -> a one-line problem at `redis_server`
        return v

    @field_validator("grpc")
    @classmethod
    def _grpc(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and "use_tls" in v and not isinstance(v["use_tls"], bool):
            fail("grpc", [(("use_tls",), f"must be true or false, got {v['use_tls']!r}")])
        return v

    @model_validator(mode="after")
    def _cross(self) -> FedConf:
        problems = []
        nodes = set(self.fed_info.trainer) | set(self.fed_info.assist_trainer)
        for node, key in sorted(self.identities.items()):
            if node not in nodes:
                problems.append((("identities", node), f"{node!r} is not a node in fed_info"))
            if not ED25519_HEX_RE.match(key):
                problems.append((("identities", node), "must be an Ed25519 public key as 64 hex digits"))
        address = parse_redis_server(self.redis_server)
        tls_files = self.redis.tls_ca_file or self.redis.tls_cert_file
        if tls_files and not (address.kind in ("tcp", "cluster", "sentinel") and address.tls):
            problems.append((("redis", "tls_ca_file" if self.redis.tls_ca_file else "tls_cert_file"),
                             "TLS files need a rediss:// redis_server (or rediss+cluster://, rediss+sentinel://)"))
        fail("fed_conf", problems)
        return self

    # --- what the rest of xfed reads (docs/CONTRACTS.md) ---
    @property
    def trainer_ids(self) -> list[str]:
        return sorted(self.fed_info.trainer)

    @property
    def assist_trainer_id(self) -> str | None:
        return next(iter(self.fed_info.assist_trainer), None)

    @property
    def node_ids(self) -> list[str]:
        assist = [self.assist_trainer_id] if self.assist_trainer_id else []
        return self.trainer_ids + assist

    @property
    def redis_address(self) -> RedisAddress:
        """`redis_server` with the `redis` options applied: ACL user, password, TLS files."""
        address = parse_redis_server(self.redis_server)
        if address.embedded:
            return address
        opts = self.redis
        password = opts.resolved_password()
        address = replace(address, username=opts.username or address.username,
                          password=password or address.password)
        return address.with_tls_files(ca_file=opts.tls_ca_file, cert_file=opts.tls_cert_file,
                                      key_file=opts.tls_key_file)

    @property
    def failover_window_s(self) -> float:
        """Seconds a Redis outage or failover is ridden out (`redis.failover_window`, resolved)."""
        if self.redis.failover_window is not None:
            return float(self.redis.failover_window)
        kind = parse_redis_server(self.redis_server).kind
        return FAILOVER_WINDOW_S if kind in ("cluster", "sentinel") else 0.0

    @property
    def config_dir(self) -> Path | None:
        """The folder fed_conf.json was loaded from (None when built in memory)."""
        return self._config_dir

    def role_of(self, node_id: str) -> str | None:
        """'label_trainer', 'assist_trainer' or None for a node not in fed_info."""
        if node_id in self.fed_info.trainer:
            return "label_trainer"
        if node_id in self.fed_info.assist_trainer:
            return "assist_trainer"
        return None
