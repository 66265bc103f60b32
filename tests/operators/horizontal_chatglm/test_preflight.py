"""Authoritative params (assist trainer wins, conflicts key by key) and fingerprint comparison."""
import pytest

from xfed.errors import PreflightError
from xfed.operators.horizontal_chatglm.preflight import (
    authoritative_params,
    compare_fingerprints,
    format_conflicts,
    model_fingerprint,
)

ASSIST = {
    "aggregation": {"agg_steps": 0.2},
    "encryption": {"otp": {"key_bitlength": 64}},
    "peft": {"LORA": {"r": 8, "target_modules": ["q_proj"]}},
    "trainer": {"learning_rate": 1e-3, "per_device_train_batch_size": 1, "num_train_epochs": 2, "seed": 42},
    "dataset": {"max_src_length": 100, "key_query": "input"},
}


def test_xfl_label_trainer_config_inherits_everything_but_its_local_keys():
    party = {"trainer": {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4, "no_cuda": True}}
    effective, conflicts = authoritative_params(ASSIST, party)
    assert conflicts == []
    assert effective["peft"] == ASSIST["peft"] and effective["encryption"] == ASSIST["encryption"]
    assert effective["trainer"]["per_device_train_batch_size"] == 2  # the party's hardware, its choice
    assert effective["trainer"]["learning_rate"] == 1e-3
    assert effective["trainer"]["gradient_accumulation_steps"] == 4


def test_conflicting_shared_keys_are_reported_one_by_one_and_the_assist_wins():
    party = {
        "trainer": {"learning_rate": 0.5, "seed": 42},
        "peft": {"LORA": {"r": 16, "target_modules": ["q_proj"]}},
        "encryption": {"plain": {}},
    }
    effective, conflicts = authoritative_params(ASSIST, party)
    keys = sorted(c["key"] for c in conflicts)
    assert keys == ["encryption", "peft.LORA.r", "trainer.learning_rate"]
    assert effective["trainer"]["learning_rate"] == 1e-3 and effective["peft"]["LORA"]["r"] == 8
    lines = format_conflicts("node-2", conflicts)
    assert any(line.startswith("node-2: train_params.trainer.learning_rate = 0.5 differs") for line in lines)


def test_party_column_names_stay_local():
    effective, conflicts = authoritative_params(ASSIST, {"dataset": {"key_query": "content", "max_src_length": 50}})
    assert effective["dataset"]["key_query"] == "content"
    assert effective["dataset"]["max_src_length"] == 100
    assert [c["key"] for c in conflicts] == ["dataset.max_src_length"]


def test_fingerprint_mismatch_names_the_party_and_builds_a_table():
    same = {"base_model": "aaa", "tokenizer": "ttt", "peft": "ppp", "schedule": "sss"}
    by_node = {"assist_trainer": same, "node-1": dict(same), "node-2": {**same, "tokenizer": "uuu"}}
    with pytest.raises(PreflightError, match=r"node-2 differs from assist_trainer in tokenizer \(uuu != ttt\)") as info:
        compare_fingerprints("assist_trainer", by_node)
    assert "\n" not in str(info.value)
    table = info.value.table.splitlines()
    assert table[0].split() == ["party", "base_model", "tokenizer", "peft", "schedule"]
    assert table[1].startswith("assist_trainer")
    assert "uuu ≠" in [line for line in table if line.startswith("node-2")][0]
    compare_fingerprints("assist_trainer", {"assist_trainer": same, "node-1": dict(same)})  # no error


def test_model_fingerprint_follows_weights_and_config(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "glm", "hidden_size": 8, "_name_or_path": "/a"}')
    (folder / "model.safetensors").write_bytes(b"weights-1")
    first = model_fingerprint(folder)
    (folder / "config.json").write_text('{"model_type": "glm", "hidden_size": 8, "_name_or_path": "/b"}')
    assert model_fingerprint(folder) == first  # where it was loaded from does not matter
    (folder / "model.safetensors").write_bytes(b"weights-2")
    assert model_fingerprint(folder) != first
