"""Reading THUDM ChatGLM-6B folders: layouts, detection, and one-line ModelErrors for bad folders."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from xfed.errors import ModelError
from xfed.models.chatglm import from_thudm_folder, is_v1_config

from .conftest import BASE_V1, FIXTURES


def _copy(src, dst):
    shutil.copytree(src, dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


def _load_error(folder) -> str:
    with pytest.raises(ModelError) as err:
        from_thudm_folder(folder)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_v1_detection_accepts_chatglm_6b_and_rejects_chatglm3():
    assert is_v1_config(json.loads((BASE_V1 / "config.json").read_text()))
    assert is_v1_config({"model_type": "chatglm6b"})
    for name in ("chatglm3-6b", "chatglm3-6b-32k"):
        assert not is_v1_config(json.loads((FIXTURES / "base" / name / "config.json").read_text()))
    assert not is_v1_config({"model_type": "llama"})


def test_shards_with_index_and_safetensors_load_the_same_weights(v1_folder, v1_loaded, tmp_path):
    from safetensors.torch import save_file

    state = torch.load(v1_folder / "pytorch_model.bin", weights_only=True)
    sharded = _copy(v1_folder, tmp_path / "sharded")
    (sharded / "pytorch_model.bin").unlink()
    keys = sorted(state)
    index = {"metadata": {}, "weight_map": {}}
    for i, part in enumerate((keys[::2], keys[1::2])):
        name = f"pytorch_model-{i + 1:05d}-of-00002.bin"
        torch.save({k: state[k] for k in part}, sharded / name)
        index["weight_map"].update({k: name for k in part})
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    st = _copy(v1_folder, tmp_path / "st")
    (st / "pytorch_model.bin").unlink()
    save_file({k: v.contiguous() for k, v in state.items()}, str(st / "model.safetensors"))
    want = v1_loaded[0].state_dict()
    for folder in (sharded, st):
        got = from_thudm_folder(folder)[0].state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_missing_weight_names_file_and_key(v1_folder, tmp_path):
    bad = _copy(v1_folder, tmp_path / "m")
    state = torch.load(bad / "pytorch_model.bin", weights_only=True)
    del state["transformer.layers.1.mlp.dense_4h_to_h.bias"]
    torch.save(state, bad / "pytorch_model.bin")
    msg = _load_error(bad)
    assert "pytorch_model.bin" in msg and "transformer.layers.1.mlp.dense_4h_to_h.bias" in msg and "missing" in msg


def test_extra_weight_and_wrong_shape_name_file_and_key(v1_folder, tmp_path):
    extra = _copy(v1_folder, tmp_path / "e")
    state = torch.load(extra / "pytorch_model.bin", weights_only=True)
    state["transformer.layers.2.attention.dense.bias"] = torch.zeros(16, dtype=torch.float16)
    torch.save(state, extra / "pytorch_model.bin")
    assert "unexpected weight 'transformer.layers.2.attention.dense.bias'" in _load_error(extra)
    shaped = _copy(v1_folder, tmp_path / "s")
    state = torch.load(shaped / "pytorch_model.bin", weights_only=True)
    state["transformer.layers.0.attention.query_key_value.weight"] = torch.zeros(48, 8, dtype=torch.float16)
    torch.save(state, shaped / "pytorch_model.bin")
    msg = _load_error(shaped)
    assert "query_key_value.weight" in msg and "(48, 8)" in msg and "(48, 16)" in msg


def test_corrupt_bin_and_missing_tokenizer_are_model_errors(v1_folder, tmp_path):
    corrupt = _copy(v1_folder, tmp_path / "c")
    data = (corrupt / "pytorch_model.bin").read_bytes()
    (corrupt / "pytorch_model.bin").write_bytes(data[: len(data) // 3])
    assert "pytorch_model.bin" in _load_error(corrupt)
    no_tok = _copy(v1_folder, tmp_path / "t")
    (no_tok / "ice_text.model").unlink()
    assert "ice_text.model" in _load_error(no_tok)


def test_pickled_code_in_a_bin_is_refused_not_run(v1_folder, tmp_path):
    evil = _copy(v1_folder, tmp_path / "p")
    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"transformer.word_embeddings.weight": Boom()}, evil / "pytorch_model.bin")
    assert "pytorch_model.bin" in _load_error(evil)
    assert not marker.exists()


def test_bad_config_values_name_the_key(v1_folder, tmp_path):
    bad = _copy(v1_folder, tmp_path / "cfg")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["num_layers"] = "two"
    (bad / "config.json").write_text(json.dumps(cfg))
    assert "'num_layers'" in _load_error(bad)
    cfg["num_layers"], cfg["quantization_bit"] = 2, 4
    (bad / "config.json").write_text(json.dumps(cfg))
    assert "quantization_bit" in _load_error(bad)


def test_xfl_demo_folder_without_weights_loads_randomly_only_when_allowed(tmp_path):
    folder = _copy(BASE_V1, tmp_path / "demo")
    msg = _load_error(folder)
    assert "no weights" in msg
    model, tok = from_thudm_folder(folder, allow_random_init=True)
    assert model.config.num_hidden_layers == 2 and tok.encode("你好") == [5, 74874, 130001, 130004]
