"""Which node events the scheduler may apply: signatures when fed_conf.json pins identities."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from xfed.errors import XfedError

if TYPE_CHECKING:
    from xfed.config import FedConf

log = logging.getLogger("xfed.scheduler")


class EventChecks:
    """Per job, the identities' verifier (None when nothing is pinned); fed_conf.json is read again
    for each job, as nodes read it at each stage start."""

    def __init__(self, fed: FedConf, namespace: str) -> None:
        self.fed, self.namespace = fed, namespace
        self._by_job: dict[str, Any] = {}   # job id -> EventVerifier | None

    def problem(self, job_id: str, msg: dict) -> str | None:
        """Why a node event must not be applied (identities pinned, signature missing or wrong), else None."""
        if msg["type"] == "job":
            return None  # the scheduler's own
        if job_id not in self._by_job:
            from xfed.config import load_fed_conf
            from xfed.security.events import EventVerifier

            identities = self.fed.identities
            config_dir = self.fed.config_dir
            if config_dir is not None:
                try:
                    identities = load_fed_conf(config_dir).identities
                except XfedError as err:
                    log.warning("job %s: fed_conf.json unreadable (%s); using identities read at start", job_id, err)
            self._by_job[job_id] = EventVerifier(identities) if identities else None
        check = self._by_job[job_id]
        return check.problem(self.namespace, msg) if check else None

    def forget(self, job_id: str) -> None:
        self._by_job.pop(job_id, None)
