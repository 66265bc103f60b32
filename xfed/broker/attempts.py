"""The attempt history of a resumed job, kept in its hash (field `attempts`) for `status`.

`start --resume J` overwrites the job's state, reason and node with the new attempt's; what each
earlier attempt ended with is appended here first, so a user can still see why attempt 0 failed.
"""
from __future__ import annotations

import json
from typing import Any

FIELD = "attempts"


def attempt_history(extra: dict[str, str]) -> list[dict[str, Any]]:
    """The recorded earlier attempts from a job hash's extra fields ([] when none or unreadable)."""
    try:
        history = json.loads(extra.get(FIELD) or "[]")
    except (ValueError, TypeError):
        return []
    return [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []


def with_ended_attempt(job: Any) -> str:
    """The `attempts` field value after appending how `job`'s current attempt ended (a Job snapshot)."""
    history = attempt_history(job.extra)
    history.append({"attempt": job.attempt, "state": job.state.value, "stage": job.stage,
                    "reason": job.reason, "node": job.node, "started": job.started, "ended": job.ended})
    return json.dumps(history, separators=(",", ":"))
