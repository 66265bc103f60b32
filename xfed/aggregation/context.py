"""What the aggregation needs of a stage's context: the node's StageContext provides it."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from xfed.broker.channels import Comm
    from xfed.config import FedConf
    from xfed.security.identity import IdentityKey


class AggregationContext(Protocol):
    job_id: str
    stage_id: int
    attempt: int
    node_id: str
    trainer_ids: list[str]
    assist_id: str | None
    comm: Comm
    fed: FedConf | None                 # its `identities` pin the DH values' signers
    identity_key: IdentityKey | None    # signs this node's DH values when identities are pinned
    incarnation: int                    # > 0: this node was restarted and rejoins the running stage

    def report(self, kind: str, data: dict[str, Any]) -> None: ...

    def membership(self) -> dict[str, int]:
        """{node: incarnation} of the label trainers restarted into this stage (the SecAgg root admits them)."""
        ...
