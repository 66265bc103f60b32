"""The real CLI (`python xfed.py -c validate`) on templates, XFL's demos and a few broken folders."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xfed.config.validate import validate_command

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = sorted(p.name for p in (REPO / "config_templates").iterdir() if (p / "fed_conf.json").is_file())
XFL = REPO.parent / "shared" / "xfl_compat"
XFL_DEMOS = sorted(p.name for p in XFL.iterdir() if (p / "config" / "fed_conf.json").is_file()) if XFL.is_dir() else []


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(REPO / "xfed.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_template_set_count():
    assert {"2party_lora", "3party_lora", "2party_ptuningv2", "3party_ptuningv2"} <= set(TEMPLATES)


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_template_validates_cleanly_once_the_demo_paths_exist(config_set, capsys, template):
    cs = config_set(template)
    assert validate_command(cs.folder) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"OK {cs.folder}: trainers node-1, node-2"), out
    assert "warning:" not in err and "error" not in err, err


def test_templates_validate_from_a_fresh_clone_with_path_warnings_only():
    proc = run_cli("-c", "validate", "--config_path", "config_templates/3party_ptuningv2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK config_templates/3party_ptuningv2: trainers node-1, node-2, node-3; assist trainer assist_trainer; " \
           "redis embedded; stage 0: horizontal_chatglm PREFIX_TUNING otp agg_steps=0.02" in proc.stdout
    for line in proc.stderr.splitlines():  # before the demo builds work/, only its paths are missing
        assert line.startswith("warning: ") and line.endswith("not found on this machine"), line


@pytest.mark.skipif(not XFL_DEMOS, reason="../shared/xfl_compat not present")
@pytest.mark.parametrize("demo", XFL_DEMOS)
def test_xfl_demo_configs_have_only_path_complaints_and_pass_with_paths_rewritten(tmp_path, capsys, demo):
    raw = XFL / demo / "config"
    assert validate_command(raw) == 0
    out, err = capsys.readouterr()
    assert out.startswith("OK "), out
    complaints = [line for line in err.splitlines() if line.startswith(("warning:", "error:"))]
    assert complaints, "XFL's relative paths point outside the copy; they must be reported"
    assert all(re.search(r"\.path: .*: (not found on this machine|.* is not writable here)$", c) for c in complaints), complaints
    assert validate_command(raw, strict=True) == 2
    strict_out = capsys.readouterr().out
    assert len(strict_out.splitlines()) == len(complaints)

    # The same files with their paths pointed at real places: no complaint at all, strict or not.
    config = tmp_path / "config"
    shutil.copytree(raw, config)
    model = tmp_path / "chatglm-demo"
    model.mkdir()
    (tmp_path / "out").mkdir()
    for f in config.glob("trainer_config_*.json"):
        stages = json.loads(f.read_text(encoding="utf-8"))
        for stage in stages:
            stage["input"]["pretrained_model"]["path"] = str(model)
            for ds in stage["input"].get("trainset", []):
                ds["path"] = str(XFL / "dataset" / "poetry_small" / Path(ds["path"]).name)
            stage["output"]["path"] = "../out/[JOB_ID]/[NODE_ID]"
        f.write_text(json.dumps(stages, ensure_ascii=False), encoding="utf-8")
    assert validate_command(config, strict=True) == 0
    out, err = capsys.readouterr()
    assert out.startswith("OK "), out
    assert not [line for line in err.splitlines() if not line.startswith("note: ")], err


# --- the real CLI on broken folders: exit 2, one line per problem, never a traceback ---
@pytest.mark.parametrize("change,expected", [
    (lambda cs: cs.write_text("trainer_config_node-2.json", '[{"identity": "label_trainer"\n  "x": 1}]'),
     r"^trainer_config_node-2\.json: line 2 column 3: invalid JSON: Expecting ',' delimiter$"),
    (lambda cs: cs.params("assist_trainer")(lambda tp: tp["peft"].update(PREFIX_TUNING={"pre_seq_len": 4})),
     r"^trainer_config_assist_trainer\.json: stage 0: train_info\.train_params\.peft: "
     r"exactly one of LORA, PREFIX_TUNING is required \(found LORA and PREFIX_TUNING\)$"),
    (lambda cs: cs.path("trainer_config_node-1.json").unlink(),
     r"^trainer_config_node-1\.json: not found: fed_conf\.json lists 'node-1' as a trainer$"),
], ids=["bad_json", "two_peft_keys", "missing_node_file"])
def test_cli_reports_broken_configs_in_one_line_each(config_set, change, expected):
    cs = config_set("2party_lora")
    change(cs)
    proc = run_cli("-c", "validate", "--config_path", str(cs.folder))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert len(proc.stdout.splitlines()) == 1 and re.search(expected, proc.stdout.strip()), proc.stdout


def test_cli_schema_is_json_covering_both_files_and_the_operators():
    proc = run_cli("-c", "validate", "--schema")
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    assert {"fed_conf.json", "trainer_config_{NODE_ID}.json", "train_params"} <= set(schema)
    assert "redis_server" in schema["fed_conf.json"]["properties"]
    assert schema["trainer_config_{NODE_ID}.json"]["type"] == "array"
    chatglm = schema["train_params"]["horizontal_chatglm"]
    assert {"aggregation", "encryption", "peft", "trainer", "dataset"} <= set(chatglm["properties"])
