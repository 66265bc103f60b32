"""Real Redis Cluster and Sentinel set-ups on loopback for tests: started on free ports, stopped by pid.

`ClusterServers`: N masters (+ R replicas each) made into a cluster with `redis-cli --cluster create`.
`SentinelServers`: one master, one replica and S sentinels (quorum 1) with a short down-after.
Both offer what the integration `Federation` needs of a server: `address` (a redis_server string)
and `client()`. `missing_reason()` says why a machine cannot run them (tests skip with it).
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def missing_reason() -> str | None:
    """Why Cluster/Sentinel tests cannot run here (None when they can)."""
    if not os.access(REDIS_SERVER, os.X_OK):
        return f"{REDIS_SERVER} is not installed"
    if not os.access(REDIS_CLI, os.X_OK):
        return "redis-cli is not installed (needed to create a cluster)"
    out = subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True).stdout
    if "v=" not in out or int(out.split("v=")[1].split(".")[0]) < 7:
        return f"{REDIS_SERVER} is not Redis 7 ({out.strip()[:60]})"
    return None


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_ports(n: int, *, bus: bool = False) -> list[int]:
    """n free loopback ports below the ephemeral range (Linux: 32768 and up), with port + 10000 free too
    for a cluster bus (then the port is below 22768, so its bus port is below the ephemeral range as well:
    an outgoing connection elsewhere on the machine cannot take it between this check and the bind)."""
    ports: list[int] = []
    while len(ports) < n:
        p = random.randint(20000, 22767 if bus else 29999)
        if p not in ports and _free(p) and (not bus or _free(p + 10000)):
            ports.append(p)
    return ports


def _cmd(port: int, *args: str, timeout: float = 5.0) -> str:
    return subprocess.run([REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), *args], capture_output=True, text=True,
                          timeout=timeout).stdout


@dataclass
class _Proc:
    port: int
    folder: Path
    args: list[str]
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.args, cwd=self.folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if not self.alive():
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _acknowledged(port: int) -> bool:
    """A write on the master at `port` is acknowledged by a replica (WAIT). "master_link_status:up"
    on the replica is not enough: after a diskless full sync the master streams nothing to the replica
    until its first REPLCONF ACK (up to a second later), so a master frozen in that second takes
    everything written since with it (seen: a whole job missing on the promoted replica)."""
    import redis

    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5) as r:
        r.set("xfed-test:replication-probe", time.monotonic())
        return r.wait(1, 500) >= 1


def _wait(pred, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _server_args(port: int, folder: Path, *extra: str) -> list[str]:
    return [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
            "--appendonly", "no", "--protected-mode", "no", "--repl-diskless-sync-delay", "0",
            "--logfile", str(folder / "redis.log"), *extra]


@dataclass
class ClusterServers:
    """A Redis Cluster of `masters` masters with `replicas` replicas each, on loopback."""

    root: Path
    masters: int = 3
    replicas: int = 0
    node_timeout_ms: int = 1000
    nodes: list[_Proc] = field(default_factory=list)

    def start(self, timeout: float = 30.0) -> ClusterServers:
        ports = free_ports(self.masters * (1 + self.replicas), bus=True)
        for p in ports:
            folder = self.root / f"cluster-{p}"
            self.nodes.append(_Proc(p, folder, _server_args(
                p, folder, "--cluster-enabled", "yes", "--cluster-config-file", str(folder / "nodes.conf"),
                "--cluster-node-timeout", str(self.node_timeout_ms), "--cluster-require-full-coverage", "yes")))
        for n in self.nodes:
            n.start()
        _wait(lambda: all(_cmd(n.port, "PING").strip() == "PONG" for n in self.nodes), "cluster nodes", timeout)
        out = subprocess.run([REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                              "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                             capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout[-800:]} {out.stderr[-400:]}")
        _wait(lambda: all("cluster_state:ok" in _cmd(n.port, "CLUSTER", "INFO") for n in self.nodes),
              "cluster_state:ok", timeout)
        if self.replicas:  # replicas must have synced before a failover can promote one
            _wait(lambda: all("master_link_status:up" in _cmd(n.port, "INFO", "replication")
                              for n in self.nodes if "role:slave" in _cmd(n.port, "INFO", "replication")),
                  "replicas in sync", timeout)
        return self

    @property
    def address(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:self.masters])

    def client(self):
        from xfed.broker.connection import connect

        return connect(self.address, retry_s=10, failover_s=30)

    def master_of(self, key: str) -> _Proc:
        """The node that serves `key` now."""
        slot = int(_cmd(self.nodes[0].port, "CLUSTER", "KEYSLOT", key).strip())
        for n in self.nodes:
            if n.alive() and "role:master" in _cmd(n.port, "INFO", "replication") and _owns(n.port, slot):
                return n
        raise RuntimeError(f"no live master serves slot {slot}")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def _owns(port: int, slot: int) -> bool:
    """Whether the node on `port` serves `slot` (from its own CLUSTER NODES line, flag myself)."""
    for line in _cmd(port, "CLUSTER", "NODES").splitlines():
        parts = line.split()
        if len(parts) > 8 and "myself" in parts[2]:
            for rng in parts[8:]:
                if rng.startswith("["):
                    continue
                lo, _, hi = rng.partition("-")
                if int(lo) <= slot <= int(hi or lo):
                    return True
    return False


@dataclass
class SentinelServers:
    """One master, one replica and `sentinels` sentinels (quorum 1) watching master `name`."""

    root: Path
    sentinels: int = 1
    name: str = "xfedmaster"
    # 2 s, not 1: Sentinel pings every second, so with down-after equal to that period a reply a little
    # late marks a master down; right after a failover that happened to the new master and Sentinel fell
    # back to the restarted, empty old one (seen in CI: the scheduler's heartbeat was gone with the data)
    down_after_ms: int = 2000
    master: _Proc | None = None
    replica: _Proc | None = None
    watchers: list[_Proc] = field(default_factory=list)

    def start(self, timeout: float = 30.0) -> SentinelServers:
        m, r, *s = free_ports(2 + self.sentinels)
        self.master = _Proc(m, self.root / "master", _server_args(m, self.root / "master"))
        self.replica = _Proc(r, self.root / "replica",
                             _server_args(r, self.root / "replica", "--replicaof", "127.0.0.1", str(m)))
        for proc in (self.master, self.replica):
            proc.start()
        for p in s:
            folder = self.root / f"sentinel-{p}"
            folder.mkdir(parents=True, exist_ok=True)
            conf = folder / "sentinel.conf"
            conf.write_text(f"port {p}\nbind 127.0.0.1\ndir {folder}\nlogfile {folder / 'sentinel.log'}\n"
                            f"sentinel monitor {self.name} 127.0.0.1 {m} 1\n"
                            f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}\n"
                            f"sentinel failover-timeout {self.name} 10000\n"
                            f"sentinel parallel-syncs {self.name} 1\n")
            self.watchers.append(_Proc(p, folder, [REDIS_SERVER, str(conf), "--sentinel"]))
        # a sentinel learns of replicas from the master's INFO (every 10 s): start it once the replica
        # is attached, so its first INFO already lists it
        _wait(lambda: "master_link_status:up" in _cmd(r, "INFO", "replication") and _acknowledged(m),
              "the replica in sync", timeout)
        for w in self.watchers:
            w.start()
        _wait(lambda: all(f"127.0.0.1\n{m}" in _cmd(w.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
                          and "slaves=1" in _cmd(w.port, "INFO", "sentinel") for w in self.watchers),
              "sentinels watching master and replica", timeout)
        return self

    @property
    def address(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{w.port}" for w in self.watchers) + f"/{self.name}"

    def master_port(self) -> int:
        out = _cmd(self.watchers[0].port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name).split()
        return int(out[1])

    def current_master(self) -> _Proc:
        port = self.master_port()
        return next(p for p in (self.master, self.replica) if p.port == port)

    def wait_replica(self, timeout: float = 30.0) -> None:
        """Until the server that is not the master replicates it and the sentinels list it (a failover
        needs a replica to promote; an old master becomes one ~10 s after it is back)."""
        master = self.current_master()
        other = self.replica if master is self.master else self.master
        _wait(lambda: "master_link_status:up" in _cmd(other.port, "INFO", "replication")
              and all("slaves=1" in _cmd(w.port, "INFO", "sentinel") for w in self.watchers)
              and _acknowledged(master.port), "a replica in sync", timeout)

    def client(self):
        from xfed.broker.connection import connect

        return connect(self.address, retry_s=10, failover_s=30)

    def diagnostics(self, lines: int = 25) -> str:
        """What each server says of its role and offsets, and the tail of every log (for a failure)."""
        out = []
        for label, proc in (("master", self.master), ("replica", self.replica)):
            if proc is None:
                continue
            try:
                info = _cmd(proc.port, "INFO", "replication", timeout=2.0)
            except subprocess.TimeoutExpired:
                info = "(no answer: frozen?)"
            out.append(f"--- {label} :{proc.port} INFO replication ---\n{info.strip()}")
        for proc in [self.master, self.replica, *self.watchers]:
            if proc is None:
                continue
            for log in proc.folder.glob("*.log"):
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {log} ---\n" + "\n".join(tail))
        return "\n".join(out)

    def stop(self) -> None:
        for proc in [*self.watchers, self.replica, self.master]:
            if proc is not None:
                proc.stop()
