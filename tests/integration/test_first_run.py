"""A new user's first run: the README's quick start runs as written, every config template runs to
SUCCESSFUL, and nothing is overwritten or forgotten when every process stops and starts again.

One scratch checkout (links to xfed.py, xfed/, scripts/, env.sh; copies of config_templates/) holds the
tiny model and data the two scripts build, so relative paths resolve as in a clone. To stay cheap the
copies train a few optimizer steps (`max_steps`, two rounds); the shipped recipe's learning is measured
in config_templates/README.md. Every process is started and stopped by pid (the README's daemons by the
process group of the shell that runs them).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, pid_alive

pytestmark = pytest.mark.integration

STEPS = 4  # optimizer steps per party in the tests (the shipped recipe trains 225 LoRA / 600 P-tuning)


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", XFED_SPARE_CHILD="0")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `python` is this one
    env.pop("XFED_WORK_DIR", None)  # the default: outside the config folder
    env.pop("XFED_CONFIG_PATH", None)
    return env


def _cheap(config: Path, interval: float = 0.5) -> None:
    """The template as shipped, but a few steps in two rounds and fast heartbeats."""
    fed = json.loads((config / "fed_conf.json").read_text())
    fed["heartbeat_interval"] = interval
    (config / "fed_conf.json").write_text(json.dumps(fed, indent=1))
    assist = config / "trainer_config_assist_trainer.json"
    stages = json.loads(assist.read_text())
    params = stages[0]["train_info"]["train_params"]
    params["trainer"]["max_steps"] = STEPS
    params["aggregation"]["agg_steps"] = 0.5
    assist.write_text(json.dumps(stages, indent=1, ensure_ascii=False))


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A scratch clone: code linked, templates copied (made cheap), tiny model and data built by the scripts."""
    root = tmp_path_factory.mktemp("clone")
    for name in ("xfed.py", "xfed", "scripts", "env.sh"):
        (root / name).symlink_to(REPO / name)
    shutil.copytree(REPO / "config_templates", root / "config_templates")
    for config in (root / "config_templates").iterdir():
        if (config / "fed_conf.json").is_file():
            _cheap(config)
    env = _env(root)
    for cmd in (["scripts/make_tiny_model.py", "--out", "work/tiny-glm", "--steps", "20", "--min-accuracy", "0"],
                ["scripts/make_demo_data.py", "--out", "work/demo_data"],
                ["scripts/make_demo_data.py", "--letters", "abcdefgh", "--out", "work/demo_data_a-h"]):
        done = subprocess.run([sys.executable, *cmd], cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    return root


def readme_quick_start() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Quick start\n.*?```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no bash block under '## Quick start'"
    return block.group(1).replace("\\\n", " ").splitlines()


def test_readme_quick_start_runs_as_written_then_the_p_tuning_template(checkout):
    lines = readme_quick_start()
    assert lines[0].startswith("./scripts/setup.sh && source env.sh")
    # scripts/test.sh (what CI runs) itself runs setup.sh and sources env.sh before the suite
    script = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT", "source env.sh"]
    for line in lines[1:]:
        if line.startswith("python scripts/make_tiny_model.py"):
            line = line.replace("--out work/tiny-glm", "--out work/tiny-glm --steps 20 --min-accuracy 0")  # the fixture's recipe
        if line.startswith("python -m xfed.infer"):  # first the P-tuning template's stages, same daemons
            script += ["cp config_templates/3party_ptuningv2/trainer_config_*.json $C/",
                       "python xfed.py -c start --follow --wait-nodes 120 --config_path $C",
                       "python xfed.py -c list --json --config_path $C"]
        script.append(line)
    shell = subprocess.Popen(["bash", "-c", "\n".join(script)], cwd=checkout, env=_env(checkout), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = shell.communicate(timeout=600)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
    assert shell.returncode == 0, out[-4000:]
    assert "\nOK config_templates/3party_lora: trainers node-1, node-2, node-3" in out, out[:2000]
    assert "job 1 SUCCESSFUL" in out and "job 2 SUCCESSFUL" in out, out[-4000:]
    assert re.search(r"^stage\s+0 \(of 1\)\s*$", out, re.M), out  # -c status of job 1
    listed = next(line for line in out.splitlines() if line.startswith("[{"))
    assert {(j["job"], j["state"]) for j in json.loads(listed)} == {("1", "SUCCESSFUL"), ("2", "SUCCESSFUL")}
    assert (checkout / "work/output/3party_lora/1/node-1/final/adapter_model.safetensors").is_file()
    assert (checkout / "work/output/3party_ptuningv2/2/node-3/final/adapter_model.safetensors").is_file()
    assert not out.rstrip().splitlines()[-1].startswith("[{"), out[-2000:]  # the inference line answered
    assert not (checkout / "config_templates/3party_lora/work").exists()  # nothing written into the config


def _spawn(root: Path, config: Path, logs: Path, name: str, *args: str) -> subprocess.Popen:
    with open(logs / f"{name}.log", "ab") as log:
        return subprocess.Popen([sys.executable, "xfed.py", *args, "--config_path", str(config)], cwd=root,
                                env=_env(root), stdout=log, stderr=subprocess.STDOUT)


def _client(root: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "xfed.py", "-c", *args, "--config_path", str(config)], cwd=root,
                          env=_env(root), capture_output=True, text=True, timeout=600)


def _stop(procs: dict[str, subprocess.Popen]) -> None:
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs.values():
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_stop_everything_start_again_both_jobs_kept_2party_lora_then_p_tuning(checkout, tmp_path):
    from xfed.broker.embedded import default_embedded_dir
    from xfed.config import load_fed_conf

    config = checkout / "config_templates" / "2party_lora"
    server = default_embedded_dir(load_fed_conf(config)) / "server.json"
    procs: dict[str, subprocess.Popen] = {}

    def start_all() -> None:
        procs["scheduler"] = _spawn(checkout, config, tmp_path, "scheduler", "-s")
        procs["assist_trainer"] = _spawn(checkout, config, tmp_path, "assist_trainer", "-a")
        for node in ("node-1", "node-2"):
            procs[node] = _spawn(checkout, config, tmp_path, node, "-t", node)

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(tmp_path.glob("*.log")))

    try:
        start_all()
        first = _client(checkout, config, "start", "--follow", "--wait-nodes", "120")
        assert first.returncode == 0 and "job 1 SUCCESSFUL" in first.stdout, first.stdout[-3000:] + logs()

        # a second scheduler on the live namespace: one line naming the first one's pid and config folder
        twin = subprocess.run([sys.executable, "xfed.py", "-s", "--config_path", str(config)], cwd=checkout,
                              env=_env(checkout), capture_output=True, text=True, timeout=120)
        assert twin.returncode == 2, twin.stderr
        assert twin.stderr.count("\n") == 1 and "scheduler is already running" in twin.stderr, twin.stderr
        assert f"pid {procs['scheduler'].pid}" in twin.stderr and f"config folder {config}" in twin.stderr

        _stop(procs)  # every process: the last one to leave stops the embedded Redis
        deadline = time.monotonic() + 60
        while server.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not server.exists()
        first_marker = json.loads((checkout / "work/output/2party_lora/1/node-1/xfed_job.json").read_text())

        start_all()
        listed = _client(checkout, config, "list", "--json")
        assert [j["job"] for j in json.loads(listed.stdout)] == ["1"], listed.stdout + listed.stderr  # remembered
        # the second job: the P-tuning template's stages on the same (restarted) federation
        for stage_file in (checkout / "config_templates/2party_ptuningv2").glob("trainer_config_*.json"):
            shutil.copy(stage_file, config / stage_file.name)
        second = _client(checkout, config, "start", "--follow", "--wait-nodes", "120")
        assert second.returncode == 0 and "job 2 SUCCESSFUL" in second.stdout, second.stdout[-3000:] + logs()
        listed = json.loads(_client(checkout, config, "list", "--json").stdout)
        assert {(j["job"], j["state"]) for j in listed} == {("1", "SUCCESSFUL"), ("2", "SUCCESSFUL")}
        uids = {j["uid"] for j in listed}
        assert len(uids) == 2 and first_marker["uid"] in uids
    finally:
        _stop(procs)
    out = checkout / "work/output"
    assert json.loads((out / "2party_lora/1/node-1/xfed_job.json").read_text()) == first_marker  # untouched
    for job, template in ((1, "2party_lora"), (2, "2party_ptuningv2")):
        for node in ("node-1", "node-2", "assist_trainer"):
            folder = out / template / str(job) / node
            assert (folder / "final" / "adapter_model.safetensors").is_file(), folder
            assert json.loads((folder / "xfed_job.json").read_text())["job"] == str(job)
    assert not any(pid_alive(p.pid) for p in procs.values())
