"""Fingerprints tell equal base models apart from different ones without sending the model anywhere."""
from __future__ import annotations

import json
import shutil

from xfed.models.fingerprint import fingerprint_mismatches, model_fingerprint, tokenizer_digest


def test_same_folder_copied_has_the_same_fingerprint(v3_folder, tmp_path):
    copy = shutil.copytree(v3_folder, tmp_path / "copy")
    cfg = json.loads((copy / "config.json").read_text()) | {"_name_or_path": "/elsewhere"}
    (copy / "config.json").write_text(json.dumps(cfg))
    a, b = model_fingerprint(v3_folder), model_fingerprint(copy)
    assert a["family"] == "chatglm3" and list(a["weights"]) == ["pytorch_model.bin"]
    assert fingerprint_mismatches(a, b) == []
    assert fingerprint_mismatches(model_fingerprint(v3_folder, quick=True), model_fingerprint(copy, quick=True)) == []


def test_changed_weights_config_or_tokenizer_are_reported(v3_folder, tmp_path):
    copy = shutil.copytree(v3_folder, tmp_path / "changed")
    data = bytearray((copy / "pytorch_model.bin").read_bytes())
    data[-100] ^= 1
    (copy / "pytorch_model.bin").write_bytes(bytes(data))
    cfg = json.loads((copy / "config.json").read_text()) | {"rope_ratio": 2}
    (copy / "config.json").write_text(json.dumps(cfg))
    (copy / "tokenizer.model").write_bytes(b"x" + (copy / "tokenizer.model").read_bytes())
    diffs = fingerprint_mismatches(model_fingerprint(v3_folder), model_fingerprint(copy))
    assert diffs == ["config", "weights:pytorch_model.bin", "tokenizer"]


def test_tokenizer_digest_is_of_the_vocabulary(v3_model):
    _, tok = v3_model
    assert tokenizer_digest(tok) == tokenizer_digest(tok)
    tok.add_tokens(["<new>"])
    assert len(tokenizer_digest(tok)) == 64
