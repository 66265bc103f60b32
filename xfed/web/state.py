"""What the status page shows, read from Redis through xfed.broker: nodes, jobs and per-round metrics.

Only what a federation member may see anyway: node ids, roles, hosts, pids, liveness; job states,
reasons and per-round metric events. Nothing of the configuration (the Redis address and password
never leave the server) and no job `extra` fields.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from xfed.broker.heartbeat import node_infos, scheduler_alive
from xfed.broker.jobstore import JobStore
from xfed.broker.streams import ControlStream

_NODE_FIELDS = ("node", "alive", "role", "host", "pid", "version", "job")
_JOB_FIELDS = ("job", "state", "stage", "n_stages", "attempt", "reason", "node", "participants", "created",
               "started", "ended")


class Snapshots:
    """Builds the page's JSON; each job's metric events are read incrementally (from the last id seen)."""

    def __init__(self, r: Any, keys: Any, configured_nodes: list[str], *, max_jobs: int = 20) -> None:
        self.r, self.keys, self.configured = r, keys, list(configured_nodes)
        self.jobs = JobStore(r, keys)
        self.max_jobs = max_jobs
        self._rounds: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        self._lock = threading.Lock()

    def nodes(self) -> list[dict[str, Any]]:
        infos = node_infos(self.r, self.keys, None)
        for n in self.configured:
            if n not in infos:
                infos.update(node_infos(self.r, self.keys, [n]))
        order = self.configured + sorted(n for n in infos if n not in self.configured)
        out = [{"node": "scheduler", "alive": scheduler_alive(self.r, self.keys), "role": "scheduler", "host": "", "pid": None,
                "version": "", "job": ""}]
        for n in order:
            d = infos[n].to_dict()
            out.append({k: d.get(k) for k in _NODE_FIELDS} | {"configured": n in self.configured})
        return out

    def rounds(self, job_id: str) -> list[dict[str, Any]]:
        """Every metrics event of the job so far (node, stage, attempt + the round record)."""
        with self._lock:
            last, rows = self._rounds.get(job_id, ("0-0", []))
            stream = ControlStream(self.r, self.keys.job_events(job_id))
            while True:
                entries = stream.read(last, count=1000)
                if not entries:
                    break
                for entry in entries:
                    last = entry.id
                    m = entry.msg
                    if m and m.get("type") == "metrics" and isinstance(m.get("data"), dict):
                        row = {"node": m.get("node"), "stage": m.get("stage"), "attempt": m.get("attempt", 0)}
                        row.update({k: v for k, v in m["data"].items() if isinstance(v, (int, float, str))})
                        rows.append(row)
            self._rounds[job_id] = (last, rows)
            return list(rows)

    def snapshot(self, job_id: str | None = None) -> dict[str, Any]:
        jobs = self.jobs.list(limit=self.max_jobs)
        chosen = next((j for j in jobs if j.job_id == job_id), None) if job_id else (jobs[0] if jobs else None)
        if job_id and chosen is None:
            chosen = self.jobs.get(job_id)
        out: dict[str, Any] = {"time": time.time(), "nodes": self.nodes(),
                               "jobs": [{k: j.to_dict().get(k) for k in _JOB_FIELDS} for j in jobs],
                               "job": None, "rounds": [], "rounds_done": 0}
        if chosen is not None:
            d = chosen.to_dict()
            out["job"] = {k: d.get(k) for k in _JOB_FIELDS}
            out["job"]["nodes"] = {n: {"state": s.state, "stage": s.stage, "pid": s.pid, "progress": s.progress,
                                       "message": s.message} for n, s in chosen.nodes.items()}
            rows = self.rounds(chosen.job_id)
            out["rounds"] = rows
            # the aggregator's rounds when there is one, else the fewest any node has finished
            by_node: dict[str, int] = {}
            for row in rows:
                if isinstance(row.get("round"), int):
                    by_node[str(row["node"])] = max(by_node.get(str(row["node"]), 0), row["round"])
            out["rounds_done"] = min(by_node.values()) if by_node else 0
            out["rounds_total"] = max((r.get("rounds") for r in rows if isinstance(r.get("rounds"), int)), default=None)
        return out
