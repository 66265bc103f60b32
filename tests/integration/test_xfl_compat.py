"""XFL's own ChatGLM demo configs run on xfed with only paths changed (scripts/run_xfl_demos.py's core).

Real redis-server, scheduler and daemons as subprocesses, the HF Trainer, peft and otp (DH + DRBG
pads) on the ChatGLM-6B folder make_folder.py writes. XFL's full poetry data takes ~5 minutes per
demo on this 2-core machine (docs/XFL_COMPAT.md), so the training files are copies of XFL's cut to
their first N instances; the configs differ from XFL's only in the three path keys (and the
deployment's redis_server, since 6379 is not ours to use).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, load_module

SHARED = REPO.parent / "shared"
XFL = SHARED / "xfl_compat"
# The smallest cut that keeps XFL's schedule: agg_steps 0.2 means 5 rounds, and every party needs at
# least one optimizer step per round (bs 2 x grad-acc 4 x 2 epochs over 24 instances = 6 steps).
N_INSTANCES = 24
PATH_KEYS = {"input.pretrained_model.path", "output.path"}

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (XFL / "3party_lora" / "config").is_dir() or not (SHARED / "fixtures" / "chatglm").is_dir(),
                       reason="../shared/xfl_compat or ../shared/fixtures/chatglm not present"),
]


@pytest.fixture(scope="module")
def xfl(tmp_path_factory):
    """(script module, work dir, ChatGLM-6B model folder, truncated copies of XFL's data)."""
    mod = load_module("run_xfl_demos", REPO / "scripts" / "run_xfl_demos.py")
    work = tmp_path_factory.mktemp("xfl")
    model = mod.build_model(work / "chatglm-demo")
    data = mod.truncate_data(work / "poetry_small", N_INSTANCES)
    return mod, work, model, data


def _failure(result, prepared) -> str:
    logs = "\n".join(f"--- {p.name} ---\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                     for p in sorted((prepared.root / "logs").glob("*.log")))
    return f"{result.state}: {result.reason}\n{logs}"


def _only_paths_changed(mod, demo: str, prepared) -> None:
    for original in sorted((XFL / demo / "config").glob("*.json")):
        copy = prepared.config / original.name
        changed = mod.changed_keys(json.loads(original.read_text(encoding="utf-8")),
                                   json.loads(copy.read_text(encoding="utf-8")))
        if original.name == "fed_conf.json":
            assert changed == ["redis_server"], changed
            continue
        assert changed, f"{original.name}: XFL's paths must have been rewritten"
        for key in changed:
            plain = re.sub(r"^\[\d+\]\.", "", key)
            assert plain in PATH_KEYS or re.fullmatch(r"input\.trainset\[\d+\]\.path", plain), (original.name, key)


def _run_successfully(xfl, demo: str):
    """Run one XFL demo (configs changed only in their paths) to SUCCESSFUL: (script module, prepared, result)."""
    mod, work, model, data = xfl
    prepared = mod.prepare_demo(demo, work, model, data_dir=data)
    result = mod.run_demo(prepared, model, timeout=1200, log=lambda *a: None)
    _only_paths_changed(mod, demo, prepared)
    assert result.state == "SUCCESSFUL", _failure(result, prepared)
    return mod, prepared, result


def test_truncated_data_is_a_prefix_of_xfls_files(xfl):
    _mod, _work, _model, data = xfl
    for f in sorted((XFL / "dataset" / "poetry_small").glob("*.json")):
        full, cut = json.loads(f.read_text(encoding="utf-8")), json.loads((data / f.name).read_text(encoding="utf-8"))
        assert cut["instruction"] == full["instruction"]
        assert cut["instances"] == full["instances"][:N_INSTANCES] and len(cut["instances"]) == N_INSTANCES


def test_3party_lora_runs_to_successful_and_every_saved_adapter_loads_and_generates(xfl):
    mod, prepared, result = _run_successfully(xfl, "3party_lora")
    assert any(n.startswith("note: fed_conf.json: grpc: ignored") for n in result.notes), result.notes  # validated first
    assert result.rounds == 5  # XFL's agg_steps 0.2
    assert sorted(a.node for a in result.adapters) == ["assist_trainer", "node-1", "node-2"]
    for a in result.adapters:
        assert a.loaded and not a.error, a
        assert a.new_tokens == mod.GENERATE_TOKENS, a
        assert a.changes_logits, f"{a.node}: the trained LoRA adapter does not change the model's output"
        assert Path(a.path).parent.parent.name == result.job and (Path(a.path) / "adapter_config.json").is_file()
        assert json.loads((Path(a.path) / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert result.adapter_max_diff == 0.0, "every party ends with the same aggregated adapter"
    # two masked label trainers: nothing to warn about
    assert not [w for w in result.warnings if "masked part" in w], result.warnings
    metrics = json.loads((prepared.output / result.job / "node-1" / "metrics.json").read_text())
    assert metrics["encryption"] == "otp" and len(metrics["rounds"]) == 5


def test_otp_with_one_masked_party_runs_and_the_warning_is_in_the_job_record(xfl):
    """2party_ptuningv2: assist trainer + one label trainer under otp; runs, and says masking hides nothing."""
    mod, prepared, result = _run_successfully(xfl, "2party_ptuningv2")
    pattern = re.compile(r"^(assist_trainer|node-2): .*otp with 1 masked party: masking hides nothing")
    warned = {m.group(1) for w in result.warnings if (m := pattern.match(w))}
    assert warned == {"assist_trainer", "node-2"}, result.warnings  # job events: both sides say so
    for node in ("assist_trainer", "node-2"):  # the job hash (`-c status --json`): each node's result
        assert any("otp with 1 masked party" in w for w in result.result_warnings[node]), result.result_warnings
    assert "masking hides nothing" in (prepared.root / "logs" / "client.log").read_text()  # what --follow showed
    for a in result.adapters:
        assert a.loaded and a.new_tokens == mod.GENERATE_TOKENS and a.changes_logits, a
    assert len(result.adapters) == 2


@pytest.mark.parametrize("args,expected", [
    (["--demos", "4party_lora"], r"^error: .*xfl_compat/4party_lora/config: no such XFL demo \(known: 1party_lora, .*3party_ptuningv2\)$"),
    (["--demos", "3party_lora", "--max-instances", "0"], r"^error: --max-instances: must be at least 1, got 0$"),
], ids=["unknown_demo", "zero_instances"])
def test_script_refuses_bad_arguments_in_one_line(xfl, capsys, args, expected):
    mod, work, _model, _data = xfl
    assert mod.main([*args, "--work", str(work)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(expected, err), err
