"""Entry point of the scheduler: `python xfed.py -s --config_path DIR` (reads only fed_conf.json)."""
from __future__ import annotations

import logging
import os
import signal
import sys


def run_scheduler(config_path: str) -> int:
    """Run the scheduler until SIGTERM/SIGINT; re-attaches to jobs a previous scheduler left running."""
    from xfed.broker.connection import connect
    from xfed.broker.keys import Keys
    from xfed.config import load_fed_conf
    from xfed.scheduler.core import Scheduler

    fed = load_fed_conf(config_path)
    logging.basicConfig(level=os.environ.get("XFED_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="%(asctime)s scheduler %(levelname)s %(message)s")
    r = connect(fed, client_name="xfed-scheduler")
    scheduler = Scheduler(fed=fed, r=r, keys=Keys(fed.redis.namespace))

    def on_signal(*_):
        scheduler.shutdown.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return scheduler.run()
