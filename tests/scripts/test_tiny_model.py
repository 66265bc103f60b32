"""scripts/make_tiny_model.py: loads back through the Auto classes, generates, deterministic, idempotent."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def tiny():
    sys.path.insert(0, str(SCRIPTS))  # the script imports its sibling make_demo_data
    spec = importlib.util.spec_from_file_location("make_tiny_model", SCRIPTS / "make_tiny_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "tiny-glm"
    assert tiny.main(["--out", str(out), "--steps", "10", "--seed", "0", "--min-accuracy", "0"]) == 0
    return out


def digest(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_loads_with_auto_classes_and_generates(built):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(built)
    model = AutoModelForCausalLM.from_pretrained(built)
    assert type(model).__name__ == "GlmForCausalLM"
    assert (tok.pad_token, tok.eos_token, tok.bos_token, tok.unk_token) == ("<pad>", "<eos>", "<bos>", "<unk>")
    cfg = model.config
    assert (cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id) == (tok.pad_token_id, tok.eos_token_id,
                                                                      tok.bos_token_id)
    assert cfg.head_dim * cfg.num_attention_heads == cfg.hidden_size
    assert getattr(tok, "chat_template", None) in (None, "")
    text = "text：\n问：copy abcd\n答："
    enc = tok(text, return_tensors="pt")
    assert enc["input_ids"][0, 0].item() == tok.bos_token_id
    assert tok.decode(enc["input_ids"][0], skip_special_tokens=True) == text  # Fuse decoder: no spaces added
    out = model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_same_seed_same_weights_and_rerun_is_a_no_op(tiny, built, tmp_path, capsys):
    again = tmp_path / "again"
    assert tiny.main(["--out", str(again), "--steps", "10", "--seed", "0", "--min-accuracy", "0"]) == 0
    assert digest(again) == digest(built)
    assert (again / "tokenizer.json").read_bytes() == (built / "tokenizer.json").read_bytes()
    mtime = (again / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert tiny.main(["--out", str(again), "--steps", "10", "--seed", "0", "--min-accuracy", "0"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert (again / "model.safetensors").stat().st_mtime_ns == mtime
    stamp = json.loads((again / tiny.STAMP).read_text())
    assert stamp["seed"] == 0 and stamp["max_steps"] == 10 and stamp["measured"]["steps"] == 10


def test_other_seed_other_weights(tiny, built, tmp_path):
    other = tmp_path / "other"
    assert tiny.main(["--out", str(other), "--steps", "10", "--seed", "1", "--min-accuracy", "0"]) == 0
    assert digest(other) != digest(built)


def test_refuses_to_replace_a_folder_it_did_not_write(tiny, tmp_path, capsys):
    mine = tmp_path / "users-model"
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        tiny.main(["--out", str(mine), "--steps", "1"])
    assert exit_info.value.code == 2
    assert "was not written by this script" in capsys.readouterr().err
    assert (mine / "config.json").read_text() == "{}"


def test_a_model_that_did_not_learn_its_skills_is_not_written(tiny, tmp_path, capsys):
    """The recipe's own check: 10 steps teach nothing, so with the default --min-accuracy it fails loudly."""
    out = tmp_path / "unlearned"
    assert tiny.main(["--out", str(out), "--steps", "10", "--seed", "0"]) == 1
    err = capsys.readouterr().err
    assert "pre-training did not converge" in err and "copy 0.0%" in err and "nothing written" in err
    assert not out.exists()
    assert not list(tmp_path.glob(".unlearned.tmp-*"))


def test_skill_accuracy_equals_greedy_generation(tiny, built):
    """The check's teacher-forced argmax scores a word exactly when generate() reproduces the answer."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built)
    model = AutoModelForCausalLM.from_pretrained(built).eval()
    rng = random.Random(3)
    acc = tiny.skill_accuracy(model, tok, random.Random(3), 8)
    hits = {}
    for skill in sorted(tiny.PRETRAIN_SKILLS):
        alphabet, fn = tiny.PRETRAIN_SKILLS[skill]
        words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(tiny.MIN_LEN, tiny.MAX_LEN)))
                 for _ in range(8)]
        good = 0
        for w in words:
            enc = tok(tiny.render_prompt(f"{skill} {w}"), return_tensors="pt")
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
            good += tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True) == fn(w) and \
                out[0, -1].item() == tok.eos_token_id
        hits[skill] = 100.0 * good / 8
    assert acc == hits
