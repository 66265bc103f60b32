"""How many jobs may run at once (`max_concurrent_jobs`), and which job a bare `-c stop` means.

Pure logic over the active jobs the store returns (newest first), shared by the scheduler and the
client's stop without a scheduler, so both answer with the same words.
"""
from __future__ import annotations

from typing import Any

from xfed.errors import JobError


def capacity_refusal(active: list[Any], max_jobs: int) -> str:
    """Why a start (or resume) is refused with `active` jobs running; "" when there is room.

    With max_jobs 1 it is the one-job-at-a-time message users and scripts already know."""
    if len(active) < max_jobs:
        return ""
    if max_jobs == 1:
        job = active[0]
        return f"job {job.job_id} is still {job.state.value}; wait for it or stop it (-c stop {job.job_id})"
    ids = ", ".join(sorted((j.job_id for j in active), key=_order))
    return (f"{len(active)} jobs are running ({ids}), max_concurrent_jobs is {max_jobs} (fed_conf.json); "
            f"wait for one or stop it (-c stop --job_id N)")


def only_active_job(active: list[Any]) -> str:
    """The job a stop without a job id means: the one running job (as before jobs could run side by side).

    With none, or with several (stopping an arbitrary one would be a guess), a JobError says so."""
    if not active:
        raise JobError("no job is running")
    if len(active) > 1:
        ids = ", ".join(sorted((j.job_id for j in active), key=_order))
        raise JobError(f"{len(active)} jobs are running ({ids}); say which one: -c stop --job_id N")
    return active[0].job_id


def _order(job_id: str) -> tuple[int, str]:
    return (int(job_id), "") if job_id.isdigit() else (1 << 62, job_id)
