"""Output folders bound to their job: a marker file names the job that owns a folder.

A job id alone does not identify a job: a Redis that lost its data hands out id 1 again, and
`output/[JOB_ID]/...` would then be the old job's folder. Every job record carries a random uid
(xfed.broker.jobstore); the first stage that writes into an output folder leaves `xfed_job.json`
there with the job id and uid, and a later job finding another job's marker, or files without
a marker, stops with one line instead of writing over them. A resumed attempt (same uid) goes on.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from xfed.errors import ConfigError
from xfed.operators.context import OperatorContext

MARKER = "xfed_job.json"


def job_identity(ctx: OperatorContext) -> dict[str, str]:
    """What the marker and resume states record about the job running `ctx`."""
    namespace = ctx.fed.redis.namespace if ctx.fed is not None else ""  # a DDP rank's context has no FedConf
    return {"job": str(ctx.job_id), "uid": ctx.job_uid, "namespace": namespace}


def same_job(recorded: dict[str, Any], ours: dict[str, str]) -> bool:
    """Whether a recorded identity is this job's: the uid decides; without uids (older records), the id."""
    if recorded.get("uid") or ours.get("uid"):
        return recorded.get("uid") == ours.get("uid")
    return str(recorded.get("job")) == ours.get("job")


def describe(recorded: dict[str, Any]) -> str:
    """`job 3 (uid 9f…, namespace 'demo')`: whose files or state these are."""
    details = [f"uid {recorded['uid']}"] if recorded.get("uid") else []
    if recorded.get("namespace"):
        details.append(f"namespace {recorded['namespace']!r}")
    return f"job {recorded.get('job', '?')}" + (f" ({', '.join(details)})" if details else "")


def read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def claim_output_dir(folder: Path, ctx: OperatorContext) -> Path:
    """Create `folder` for this job, or accept it when it is already this job's; ConfigError otherwise."""
    folder = Path(folder)
    ours = job_identity(ctx)
    node = ctx.node_id
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{node}: output.path {folder} is a file, not a folder")
    marker = read_marker(folder) if folder.is_dir() else None
    if marker is not None:
        if not same_job(marker, ours):
            raise ConfigError(f"{node}: output folder {folder} holds the files of {describe(marker)}, not of this "
                              f"{describe(ours)}; xfed does not write over them: move the folder away, or give "
                              "each federation its own output.path (with a [JOB_ID] level)")
        return folder
    if folder.is_dir() and any(folder.iterdir()):
        raise ConfigError(f"{node}: output folder {folder} already holds files that are no xfed job's; xfed does "
                          "not write over them: move them away or choose another output.path")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{MARKER}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({**ours, "node": node}, indent=1))
    try:  # create-if-absent: two jobs running at once with one output.path must not both claim it
        os.link(tmp, folder / MARKER)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    marker = read_marker(folder)
    if marker is None or not same_job(marker, ours):
        raise ConfigError(f"{node}: output folder {folder} was just claimed by "
                          f"{describe(marker) if marker else 'another process'}; give each job its own "
                          "output.path (with a [JOB_ID] level)")
    return folder
