"""Entry point of the node daemons: `python xfed.py -t NODE_ID` and `python xfed.py -a`."""
from __future__ import annotations

import logging
import os
import sys

from xfed.errors import ConfigError

log = logging.getLogger("xfed.node")


def resolve_node(fed, node_id: str | None, assist: bool) -> tuple[str, str]:
    """(node id, role) for this daemon, checked against fed_conf.json's fed_info."""
    if assist:
        if not fed.assist_trainer_id:
            raise ConfigError("fed_conf.json: fed_info.assist_trainer is empty, so there is no assist trainer to run")
        if node_id and node_id != fed.assist_trainer_id:
            raise ConfigError(f"fed_conf.json: the assist trainer is {fed.assist_trainer_id!r}, not {node_id!r}")
        return fed.assist_trainer_id, "assist_trainer"
    if not node_id:
        raise ConfigError("-t needs a NODE_ID")
    if node_id not in fed.trainer_ids:
        hint = " (that is the assist trainer: run it with -a)" if node_id == fed.assist_trainer_id else ""
        raise ConfigError(f"fed_conf.json: {node_id!r} is not in fed_info.trainer "
                          f"({', '.join(fed.trainer_ids) or 'empty'}){hint}")
    return node_id, "label_trainer"


def run_node(config_path: str, node_id: str | None = None, assist: bool = False) -> int:
    """Run a trainer (or, with assist=True, the assist trainer) daemon until SIGTERM/SIGINT."""
    from xfed.broker.connection import connect
    from xfed.broker.keys import Keys
    from xfed.config import load_fed_conf
    from xfed.node.daemon import NodeDaemon
    from xfed.node.identity import load_identity_key

    fed = load_fed_conf(config_path)
    node, role = resolve_node(fed, node_id, assist)
    # a pinned node without its key could not sign the events it reports: refuse to start
    identity_key = load_identity_key(fed, config_path, node)
    logging.basicConfig(level=os.environ.get("XFED_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format=f"%(asctime)s {node} %(levelname)s %(message)s")
    r = connect(fed, client_name=f"xfed-{node}")
    daemon = NodeDaemon(config_path=config_path, node_id=node, role=role, fed=fed, r=r,
                        keys=Keys(fed.redis.namespace), identity_key=identity_key)
    daemon.install_signal_handlers()
    return daemon.run()
