"""demo/horizontal_mean: run.sh runs a job to SUCCESSFUL on an embedded Redis; stop.sh stops exactly its pids."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from tests.integration.conftest import REPO
from tests.integration.conftest import pid_alive as _alive

pytestmark = pytest.mark.integration


def test_run_sh_then_stop_sh(tmp_path):
    demo = tmp_path / "horizontal_mean"
    shutil.copytree(REPO / "demo" / "horizontal_mean", demo, ignore=shutil.ignore_patterns("work"))
    fed = json.loads((demo / "config" / "fed_conf.json").read_text())
    fed["redis"]["namespace"] = f"demo_test_{os.getpid()}"  # never meet a real demo run on this machine
    fed["heartbeat_interval"] = 0.5
    (demo / "config" / "fed_conf.json").write_text(json.dumps(fed))
    assist = demo / "config" / "trainer_config_assist_trainer.json"
    stages = json.loads(assist.read_text())
    stages[0]["train_info"]["train_params"].update(rounds=3, dim=2000)  # the demo's shape, less work
    assist.write_text(json.dumps(stages))
    env = dict(os.environ, XFED_HOME=str(REPO), OMP_NUM_THREADS="1")
    try:
        # extra arguments go to the client: a loaded machine may take longer than the demo's 60 s to start 5 daemons
        run = subprocess.run([str(demo / "run.sh"), "--wait-nodes", "300"], capture_output=True, text=True, env=env,
                             timeout=600)
        pids = {p.stem: int(p.read_text()) for p in (demo / "work" / "pids").glob("*.pid")}
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "SUCCESSFUL" in run.stdout and "round 3/3" in run.stdout
        assert set(pids) == {"scheduler", "assist_trainer", "node-1", "node-2", "node-3"}
        assert all(_alive(p) for p in pids.values())  # daemons keep running after the job
        result = json.loads(next((demo / "work" / "output").glob("*/node-2/horizontal_mean.json")).read_text())
        assert result["result"]["encryption"] == "otp" and result["result"]["contributors"] == 3
    finally:
        subprocess.run([str(demo / "stop.sh")], capture_output=True, text=True, env=env, timeout=300)
    deadline = time.monotonic() + 120
    while any(_alive(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids.values())
    assert not list((demo / "work" / "pids").glob("*.pid"))
    from xfed.broker.embedded import default_embedded_dir
    from xfed.config import load_fed_conf

    state = default_embedded_dir(load_fed_conf(demo / "config")) / "server.json"
    deadline = time.monotonic() + 120
    while state.exists() and time.monotonic() < deadline:  # the last daemon to leave stops it
        time.sleep(0.1)
    assert not state.exists() or not _alive(json.loads(state.read_text())["pid"])
