"""Preflight: conflicts reported key by key, fingerprints compared with a per-party diff table."""
import pytest

from xfed.errors import PreflightError
from xfed.operators.horizontal_chatglm.config import validated_params
from xfed.operators.horizontal_chatglm.merge import merge_authoritative
from xfed.operators.horizontal_chatglm.preflight import (
    compare_fingerprints,
    conflict_warnings,
    model_fingerprint,
)

ASSIST = {
    "aggregation": {"agg_steps": 0.2},
    "peft": {"LORA": {"r": 8, "target_modules": ["q_proj"]}},
    "trainer": {"learning_rate": 1e-3, "per_device_train_batch_size": 1, "seed": 42},
}


def test_each_conflicting_key_is_one_warning_naming_party_and_key():
    party = {"trainer": {"learning_rate": 0.5, "per_device_train_batch_size": 4}, "peft": {"LORA": {"r": 16}}}
    effective, conflicts = merge_authoritative(validated_params(ASSIST, "assist"),
                                               validated_params(party, "node-2", complete=False))
    lines = conflict_warnings("node-2", conflicts)
    assert len(lines) == 2
    assert any(line.startswith("node-2: train_params.trainer.learning_rate") for line in lines)
    assert any(line.startswith("node-2: train_params.peft.LORA.r") for line in lines)
    assert effective.trainer["learning_rate"] == 1e-3 and effective.trainer["per_device_train_batch_size"] == 4


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


def test_model_fingerprint_follows_weights_not_location(tiny_glm, tmp_path):
    import shutil

    copy = tmp_path / "elsewhere"
    shutil.copytree(tiny_glm, copy)
    first = model_fingerprint(tiny_glm)
    assert model_fingerprint(copy) == first  # where it was loaded from does not matter
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert model_fingerprint(copy) != first
