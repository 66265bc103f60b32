"""Pure pieces of the node: exit descriptions, JSON-safe event data, which node a daemon is."""
from __future__ import annotations

import signal

import numpy as np
import pytest

from xfed.errors import ConfigError
from xfed.node.child import describe_exit
from xfed.node.events import _jsonable
from xfed.node.main import resolve_node
from xfed.node.stage_runner import EXIT_DONE, EXIT_ERROR_REPORTED, EXIT_STOPPED


def test_describe_exit_names_signals_and_codes():
    assert "SIGKILL (signal 9)" in describe_exit(-signal.SIGKILL) and "OOM" in describe_exit(-9)
    assert describe_exit(-signal.SIGSEGV).startswith("killed by SIGSEGV")
    assert describe_exit(EXIT_DONE) == "exited normally"
    assert describe_exit(EXIT_ERROR_REPORTED) == "failed (error reported)"
    assert describe_exit(EXIT_STOPPED) == "stopped on request"
    assert describe_exit(1) == "exited with code 1"


def test_event_data_is_made_json_safe():
    data = {"loss": np.float32(0.5), "n": np.int64(3), "nan": float("nan"), "arr": (1, 2), 4: object}
    out = _jsonable(data)
    assert out["loss"] == 0.5 and out["n"] == 3 and out["nan"] is None and out["arr"] == [1, 2]
    assert isinstance(out["4"], str)
    deep = {}
    cur = deep
    for _ in range(20):
        cur["x"] = {}
        cur = cur["x"]
    assert _jsonable(deep)  # no recursion error


class _Fed:
    trainer_ids = ["node-1", "node-2"]
    assist_trainer_id = "assist_trainer"


def test_resolve_node_checks_fed_info():
    assert resolve_node(_Fed, None, True) == ("assist_trainer", "assist_trainer")
    assert resolve_node(_Fed, "node-2", False) == ("node-2", "label_trainer")
    with pytest.raises(ConfigError, match="'node-9' is not in fed_info.trainer"):
        resolve_node(_Fed, "node-9", False)
    with pytest.raises(ConfigError, match="run it with -a"):
        resolve_node(_Fed, "assist_trainer", False)

    class NoAssist(_Fed):
        assist_trainer_id = None

    with pytest.raises(ConfigError, match="no assist trainer"):
        resolve_node(NoAssist, None, True)
