"""The demo task's learning under a CPU kernel family other than the machine's default.

A demo that learned on one CPU sat on a knife edge on another (issue 12: held-out exact match 0.83 on an
AMD EPYC, 0.00 with AVX-512 and 0.08 with AVX2 kernels on a Xeon): floating-point rounding differs per
SIMD kernel family and the tiny model's pre-training amplified it. This builds a fresh tiny model with
ATEN_CPU_CAPABILITY=default (no SIMD kernels: different rounding from every x86 machine's default), whose
own check must pass, and runs the demo's LoRA recipe as a FedAvg sketch (scripts/check_learning.py) on
the demo data; both must clear their thresholds with margin. Slow (~1 min of one core), on purpose.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
KERNELS = "default"


def run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    environ = dict(os.environ, ATEN_CPU_CAPABILITY=KERNELS, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **env)
    return subprocess.run([sys.executable, *args], env=environ, capture_output=True, text=True, timeout=3600)  # a hang guard only: a loaded machine is slow


@pytest.mark.slow
def test_fresh_tiny_model_and_demo_lora_learn_under_default_kernels(tmp_path):
    model, data = tmp_path / "tiny-glm", tmp_path / "demo_data"
    built = run([str(SCRIPTS / "make_tiny_model.py"), "--out", str(model)])
    assert built.returncode == 0, built.stderr[-2000:]
    stamp = json.loads((model / "xfed_tiny_recipe.json").read_text())
    measured = stamp["measured"]
    assert measured["cpu_capability"] == "DEFAULT"
    # the recipe's own check passed (>= 99% per skill on 200 fresh words) and the skills clicked early
    # enough to leave the whole anneal inside the step budget
    assert min(measured["exact_match"].values()) >= 99.0, measured
    assert measured["learned_at"] is not None and measured["steps"] <= stamp["max_steps"]
    assert measured["loss"] < 0.01, measured

    made = run([str(SCRIPTS / "make_demo_data.py"), "--out", str(data)])
    assert made.returncode == 0, made.stderr[-2000:]
    checked = run([str(SCRIPTS / "check_learning.py"), "--model", str(model), "--data", str(data), "--json"])
    assert checked.stdout.strip(), checked.stderr[-2000:]
    result = json.loads(checked.stdout.strip().splitlines()[-1])
    print(json.dumps({"tiny_model": measured, **result}))  # the numbers, for -s and for a failure's report
    assert result["cpu_capability"] == "DEFAULT"
    assert result["heldout_base"]["all"] <= 5.0, result  # the ciphers are new to the base model
    # every cipher learned, not just one party's: a fragile recipe fails here before the demo does
    fed = result["heldout_fedavg"]
    assert fed["all"] >= 75.0 and min(fed[s] for s in ("shift", "back", "mirror")) >= 50.0, result
    assert checked.returncode == 0, checked.stderr[-2000:]
