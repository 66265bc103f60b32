"""Every Redis key name xfed uses, built in one place, plus the ACL key patterns derived from them.

Schema (``ns`` = the configurable namespace, so two federations can share one server):

    ns:requests                                  stream   client -> scheduler requests
    ns:job_counter                               string   INCR -> next job id
    ns:jobs                                      zset     job id -> creation time
    ns:job:{J}                                   hash     job state (state, stage, reason, node, timestamps)
    ns:job:{J}:events                            stream   node -> scheduler events of job J
    ns:job:{J}:signal                            stream   one entry per state change of job J (a
                                                          stage's stop watcher blocks on it)
    ns:job:{J}:s:S.A:to:R:from:N                 stream   data-plane mailbox: job J, stage S, attempt A,
                                                          receiver R, sender N
    ns:job:{J}:s:S.A.iI-K:to:R:from:N            stream   the same once R (incarnation I) or N (incarnation
                                                          K) restarted and rejoined the stage (a rejoin
                                                          starts fresh mailboxes: sequence numbers from 0)
    ns:job:{J}:p:S.A:N                           stream   a payload N published once for all its
                                                          receivers (their mailboxes point at it)
    ns:nodes                                     set      registered node ids
    ns:node:{N}:info                             hash     role, host, pid, version of node N
    ns:node:{N}:hb                               string   heartbeat of node N (with a TTL)
    ns:node:{N}:cmd                              stream   scheduler -> node N commands (consumer group)
    ns:scheduler                                 hash     the scheduler's registration (TTL = its heartbeat)
    ns:reply:R                                   list     the scheduler's answer to client request R (short TTL)

``{J}`` / ``{N}`` are literal braces: a Redis Cluster hash tag, so every multi-key operation on one
job (gathering from several mailboxes with one XREAD) stays in one slot. Ids are restricted to
``[A-Za-z0-9_.-]`` so that ``:``-separated glob patterns (SCAN, ACL selectors) cannot be fooled by an id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from xfed.errors import ConfigError
from xfed.ids import ID_RULE, is_id

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")  # ':' allowed: it only ever prefixes the schema


def check_id(kind: str, value: object) -> str:
    """Return `value` as a str if it is a valid id for keys (node, job, namespace), else ConfigError."""
    text = str(value)
    if not is_id(text):
        raise ConfigError(f"invalid {kind} {text!r}: use {ID_RULE}")
    return text


@dataclass(frozen=True)
class Keys:
    """Key builder for one namespace; all methods are pure string formatting."""

    namespace: str = "xfed"

    def __post_init__(self) -> None:
        if not isinstance(self.namespace, str) or not _NAMESPACE_RE.match(self.namespace):
            raise ConfigError(f"invalid redis namespace {self.namespace!r}: use 1-64 characters from "
                              "A-Z a-z 0-9 _ . : -")

    # --- control plane -------------------------------------------------------------------------
    def requests(self) -> str:
        return f"{self.namespace}:requests"

    def job_counter(self) -> str:
        return f"{self.namespace}:job_counter"

    def jobs_index(self) -> str:
        return f"{self.namespace}:jobs"

    def job(self, job_id: str | int) -> str:
        return f"{self.namespace}:job:{{{check_id('job id', job_id)}}}"

    def job_events(self, job_id: str | int) -> str:
        return f"{self.job(job_id)}:events"

    def job_signal(self, job_id: str | int) -> str:
        return f"{self.job(job_id)}:signal"

    def job_pattern(self, job_id: str | int) -> str:
        """SCAN/KEYS pattern matching every key of one job (its hash, events and mailboxes)."""
        return f"{self.job(job_id)}*"

    def nodes(self) -> str:
        return f"{self.namespace}:nodes"

    def _node(self, node_id: str) -> str:
        return f"{self.namespace}:node:{{{check_id('node id', node_id)}}}"

    def node_info(self, node_id: str) -> str:
        return f"{self._node(node_id)}:info"

    def heartbeat(self, node_id: str) -> str:
        return f"{self._node(node_id)}:hb"

    def node_cmd(self, node_id: str) -> str:
        return f"{self._node(node_id)}:cmd"

    def scheduler(self) -> str:
        return f"{self.namespace}:scheduler"

    def reply(self, request_id: str) -> str:
        return f"{self.namespace}:reply:{check_id('request id', request_id)}"

    # --- data plane ----------------------------------------------------------------------------
    def mailbox(self, job_id: str | int, stage: int, receiver: str, sender: str, attempt: int = 0,
                incarnations: tuple[int, int] = (0, 0)) -> str:
        """Stream carrying messages from `sender` to `receiver` in one (job, stage, attempt).

        `incarnations` (receiver's, sender's): how often each was restarted into this stage (a
        rejoin, xfed.aggregation.secagg); (0, 0) is the original key."""
        stage, attempt = int(stage), int(attempt)
        inc_r, inc_s = (int(i) for i in incarnations)
        if stage < 0 or attempt < 0 or inc_r < 0 or inc_s < 0:
            raise ConfigError(f"invalid stage/attempt/incarnations {stage}/{attempt}/{inc_r}-{inc_s}: must be >= 0")
        gen = f".i{inc_r}-{inc_s}" if inc_r or inc_s else ""
        return (f"{self.job(job_id)}:s:{stage}.{attempt}{gen}"
                f":to:{check_id('node id', receiver)}:from:{check_id('node id', sender)}")

    def shared(self, job_id: str | int, stage: int, sender: str, attempt: int = 0) -> str:
        """Stream carrying the payload `sender` publishes once for all its receivers (Comm.publish).

        Under `:p:`, not `:s:`: no mailbox key can match the ACL pattern that lets nodes read it."""
        stage, attempt = int(stage), int(attempt)
        if stage < 0 or attempt < 0:
            raise ConfigError(f"invalid stage/attempt {stage}/{attempt}: must be >= 0")
        return f"{self.job(job_id)}:p:{stage}.{attempt}:{check_id('node id', sender)}"

    def shared_pattern(self, job_id: str | int) -> str:
        return f"{self.job(job_id)}:p:*"

    def mailbox_pattern(self, job_id: str | int) -> str:
        return f"{self.job(job_id)}:s:*"

    # --- ACL -----------------------------------------------------------------------------------
    def node_acl_selectors(self, node_id: str) -> list[str]:
        """Redis 7 key selectors for node `node_id`'s ACL user.

        The node may read and delete entries of its own mailboxes, append to any mailbox only as
        sender `node_id`, publish payloads as itself and read what others published, read job
        hashes, append job events, use its own command stream, info and heartbeat, and read the
        node registry. It cannot read another node's mailbox.
        """
        node = check_id("node id", node_id)
        ns = self.namespace
        return [
            f"~{ns}:job:*:to:{node}:from:*",      # own mailboxes: read, then XDEL what was consumed
            f"%W~{ns}:job:*:to:*:from:{node}",    # write as itself into others' mailboxes
            f"~{ns}:job:{{*}}:p:*:{node}",         # its own published payloads (written once, replaced)
            f"%R~{ns}:job:{{*}}:p:*",              # read what others published (a round's mean)
            f"%R~{ns}:job:{{*}}",                 # job state (to abort when a job fails/stops)
            f"%R~{ns}:job:{{*}}:signal",          # ... woken by its state changes
            f"%W~{ns}:job:{{*}}:events",          # report events
            f"~{ns}:node:{{{node}}}:*",           # own info, heartbeat and command stream
            f"%R~{ns}:nodes",
            f"%W~{ns}:nodes",
        ]
