"""ChatGLM-6B (v1) folders through the generic entry points: load_pretrained, load_adapter, make_peft_model."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from xfed.models import detect_family, load_adapter, load_pretrained, make_peft_model, resolve_target_modules

V1 = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "chatglm" / "v1-tiny"
ATOL = 1e-3

pytest.importorskip("xfed.models.chatglm")


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    ref = json.loads((V1 / "reference.json").read_text(encoding="utf-8"))
    spec = importlib.util.spec_from_file_location("chatglm_make_folder_dispatch", V1.parent / "make_folder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = tmp_path_factory.mktemp("v1d") / "chatglm-6b"
    module.build(str(V1), str(folder))
    return folder, ref


def assert_rows(rows, logits, probe_ids):
    for b, row in enumerate(rows):
        got = logits[b, row["positions"]]
        assert got.argmax(-1).tolist() == row["argmax"]
        torch.testing.assert_close(got[:, probe_ids], torch.tensor(row["probe"]), atol=ATOL, rtol=0)


def run(model, ref):
    f = ref["forward"]
    with torch.no_grad():
        return model(input_ids=torch.tensor(f["input_ids"]), attention_mask=torch.tensor(f["attention_mask"])).logits


def test_v1_folder_and_its_saved_copy_load_through_load_pretrained(v1, tmp_path):
    folder, ref = v1
    assert detect_family(folder) == "chatglm"
    model, tok = load_pretrained(folder)
    assert_rows(ref["forward"]["rows"], run(model, ref), ref["probe_ids"])
    assert tok.encode(ref["tokenize"][0]["text"]) == ref["tokenize"][0]["ids"]
    model.save_pretrained(tmp_path / "saved")
    tok.save_pretrained(tmp_path / "saved")
    assert detect_family(tmp_path / "saved") == "chatglm"
    again, _ = load_pretrained(tmp_path / "saved")
    torch.testing.assert_close(run(again, ref), run(model, ref), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["lora", "ptuning"])
def test_v1_adapters_through_load_adapter(v1, kind):
    folder, ref = v1
    model, _ = load_pretrained(folder)
    path = V1 / (ref["lora"]["dir"] if kind == "lora" else Path(ref["ptuning"]["file"]).parent)
    assert_rows(ref[kind]["rows"], run(load_adapter(model, path), ref), ref["probe_ids"])


def test_v1_targets_and_prefix_config(v1):
    from peft import PrefixTuningConfig

    folder, _ = v1
    model, _ = load_pretrained(folder)
    assert resolve_target_modules(model, ["query_key_value"]) == ["query_key_value"]
    assert resolve_target_modules(model, "auto") == ["query_key_value"]
    peft_model = make_peft_model(model, PrefixTuningConfig(num_virtual_tokens=2, task_type="CAUSAL_LM"))
    assert peft_model.peft_config["default"].token_dim == model.config.hidden_size
