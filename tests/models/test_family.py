"""detect_family reads config.json only: THUDM ChatGLM variants, converted copies, native folders."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from xfed.errors import ModelError
from xfed.models import detect_family

BASE = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "chatglm" / "base"


def folder_with(tmp_path: Path, cfg: dict, name: str = "m", tokenizer_cfg: dict | None = None) -> Path:
    out = tmp_path / name
    out.mkdir()
    (out / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    if tokenizer_cfg is not None:
        (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_cfg), encoding="utf-8")
    return out


@pytest.mark.parametrize("name,family", [("chatglm-6b", "chatglm"), ("chatglm3-6b", "chatglm3"),
                                         ("chatglm3-6b-32k", "chatglm3")])
def test_thudm_base_folders(name, family):
    assert detect_family(BASE / name) == family


def test_chatglm2_is_told_apart_by_its_name(tmp_path):
    cfg = json.loads((BASE / "chatglm3-6b" / "config.json").read_text()) | {"_name_or_path": "THUDM/chatglm2-6b"}
    assert detect_family(folder_with(tmp_path, cfg, tokenizer_cfg={"name_or_path": "THUDM/chatglm2-6b"})) == "chatglm2"


def test_native_and_converted_folders(tmp_path):
    assert detect_family(folder_with(tmp_path, {"model_type": "llama"}, "a")) == "auto"
    assert detect_family(folder_with(tmp_path, {"model_type": "glm", "xfed_source_family": "chatglm3"}, "b")) \
        == "chatglm3"


def test_glm4_thudm_folder_is_refused(tmp_path):
    cfg = json.loads((BASE / "chatglm3-6b" / "config.json").read_text()) | {"padded_vocab_size": 151552}
    with pytest.raises(ModelError, match="GLM-4"):
        detect_family(folder_with(tmp_path, cfg))


def test_unknown_chatglm_variant_names_the_file(tmp_path):
    with pytest.raises(ModelError, match=r"config\.json: unknown ChatGLM variant"):
        detect_family(folder_with(tmp_path, {"model_type": "chatglm", "hidden_size": 8}))


def test_missing_or_broken_config(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        detect_family(tmp_path / "nowhere")
    with pytest.raises(ModelError, match=r"config\.json not found"):
        detect_family(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{nope", encoding="utf-8")
    with pytest.raises(ModelError, match="not valid JSON"):
        detect_family(bad)
    shutil.rmtree(bad)
