"""How the client's outputs name a job's stages, durations and progress (status, list, --follow)."""
from __future__ import annotations

import time
from typing import Any

from xfed.broker.jobrecord import Job


def stage_text(stage: int, n_stages: int | None = None) -> str:
    """A stage as every output names it: its index in trainer_config_*.json, from 0 (as [STAGE_ID])."""
    if stage < 0:
        return "-"
    return f"{stage} (of {n_stages})" if n_stages else str(stage)


def duration(job: Job) -> str:
    """How long a job ran (or has run so far)."""
    if not job.started:
        return "-"
    end = job.ended or time.time()
    return f"{end - job.started:.1f} s"


def progress_text(data: dict[str, Any]) -> str:
    """'round 2/5, step 40/100, eta 1m05s' from whatever of those a progress event carries."""
    parts = []
    if "round" in data and "rounds" in data:
        parts.append(f"round {data['round']}/{data['rounds']}")
    if "step" in data and "steps" in data:
        parts.append(f"step {data['step']}/{data['steps']}")
    if not parts and isinstance(data.get("fraction"), (int, float)):
        parts.append(f"{100 * float(data['fraction']):.0f}%")
    eta = data.get("eta_s")
    if isinstance(eta, (int, float)) and eta > 0:
        parts.append(f"eta {int(eta) // 60}m{int(eta) % 60:02d}s")
    eps, delta = data.get("dp_epsilon"), data.get("dp_delta")
    if isinstance(eps, (int, float)) and isinstance(delta, (int, float)):  # aggregation.dp: budget spent so far
        parts.append(f"dp eps {eps:.3g} (delta {delta:.0e})")
    return ", ".join(parts)
