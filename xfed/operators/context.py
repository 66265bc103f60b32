"""What an operator's `run(ctx)` may rely on: the node's StageContext (xfed/node/context.py) provides it."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from xfed.aggregation.context import AggregationContext

if TYPE_CHECKING:
    from xfed.config import FedConf, Stage


class OperatorContext(AggregationContext, Protocol):
    identity: str       # "label_trainer" | "assist_trainer"
    stage: Stage        # this node's own stage config (never leaves the party)
    fed: FedConf | None  # None only in a DDP rank's context (ddp_rank.RankContext)
    work_dir: Path
    incarnation: int    # > 0: this node was restarted and rejoins the running stage (rejoin.py)
    job_uid: str        # the job record's uid: output folders and resume states carry it

    def should_stop(self) -> bool: ...
