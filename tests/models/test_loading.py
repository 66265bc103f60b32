"""load_pretrained: THUDM layouts (.bin, shards, safetensors), dtypes, save/reload, native folders, bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from xfed.errors import ModelError
from xfed.models import load_pretrained

IDS = torch.tensor([[64790, 64792, 36474, 54591, 13755, 993]])


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def v3_logits(v3_folder):
    model, _ = load_pretrained(v3_folder)
    return logits(model)


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def thudm_state(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "pytorch_model.bin", weights_only=True)


def test_sharded_bin_with_index_loads_the_same(v3_folder, v3_logits, tmp_path):
    folder = copy_folder(v3_folder, tmp_path / "sharded")
    state = thudm_state(folder)
    (folder / "pytorch_model.bin").unlink()
    keys = sorted(state)
    weight_map = {}
    for i, part in enumerate((keys[::2], keys[1::2])):
        name = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({k: state[k] for k in part}, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model, _ = load_pretrained(folder)
    torch.testing.assert_close(logits(model), v3_logits, rtol=0, atol=0)


def test_thudm_names_in_safetensors_load_the_same(v3_folder, v3_logits, tmp_path):
    folder = copy_folder(v3_folder, tmp_path / "st")
    state = thudm_state(folder)
    (folder / "pytorch_model.bin").unlink()
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    model, _ = load_pretrained(folder)
    torch.testing.assert_close(logits(model), v3_logits, rtol=0, atol=0)


def test_fp16_weights_are_cast_to_the_requested_dtype(v3_folder, v3_logits):
    model, _ = load_pretrained(v3_folder, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert (logits(model).float() - v3_logits).abs().max() < 0.2


def test_save_pretrained_then_reload_gives_the_same_logits(v3_folder, v3_logits, tmp_path):
    model, tokenizer = load_pretrained(v3_folder)
    model.save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")
    again, tok_again = load_pretrained(tmp_path / "saved")
    torch.testing.assert_close(logits(again), v3_logits, rtol=0, atol=0)
    assert tok_again.encode("你好") == tokenizer.encode("你好")
    assert type(tok_again).__name__ == "ChatGLM3Tokenizer"


PLAIN = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, out = sys.argv[1], sys.argv[2]
assert "xfed" not in sys.modules
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(folder)
ids = torch.tensor([tok.encode("你好") + tok.encode("Hello world", add_special_tokens=False)])
with torch.no_grad():
    torch.save({"class": type(model).__name__, "ids": ids, "logits": model(input_ids=ids).logits}, out)
"""


@pytest.mark.integration
def test_convert_output_loads_with_plain_transformers(v3_folder, v3_logits, tmp_path):
    import subprocess
    import sys

    from click.testing import CliRunner

    from xfed.cli import main

    result = CliRunner().invoke(main, ["convert", str(v3_folder), str(tmp_path / "native")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "native" / "model.safetensors").is_file()
    assert "auto_map" not in json.loads((tmp_path / "native" / "tokenizer_config.json").read_text())
    # a fresh interpreter without xfed: plain transformers model and tokenizer
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", PLAIN, str(tmp_path / "native"), str(tmp_path / "out.pt")], check=True,
                   env=env | {"OMP_NUM_THREADS": "1"}, timeout=120, cwd=tmp_path)
    plain = torch.load(tmp_path / "out.pt", weights_only=True)
    assert plain["class"] == "GlmForCausalLM"
    assert plain["ids"].tolist() == IDS.tolist()
    torch.testing.assert_close(plain["logits"], v3_logits, rtol=0, atol=0)
    # converting onto a non-empty folder is a one-line error, exit 2
    again = CliRunner().invoke(main, ["convert", str(v3_folder), str(tmp_path / "native")])
    assert again.exit_code == 2 and "not empty" in again.output and "Traceback" not in again.output


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_native_tiny_folders_load_through_load_pretrained(native_folders, kind):
    from transformers import AutoModelForCausalLM

    model, tokenizer = load_pretrained(native_folders[kind])
    ref = AutoModelForCausalLM.from_pretrained(native_folders[kind])
    ids = torch.tensor([tokenizer.encode("the cat sat on a mat")])
    torch.testing.assert_close(logits(model, ids), logits(ref, ids), rtol=0, atol=0)
    assert tokenizer.pad_token_id is not None
    out = model.generate(input_ids=ids, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 2


def test_folder_without_weights_needs_allow_random_init(v3_folder, native_folders, tmp_path):
    bare = copy_folder(v3_folder, tmp_path / "bare")
    (bare / "pytorch_model.bin").unlink()
    with pytest.raises(ModelError, match="no weights"):
        load_pretrained(bare)
    model, _ = load_pretrained(bare, allow_random_init=True)
    assert type(model).__name__ == "GlmForCausalLM"
    bare_native = copy_folder(native_folders["llama"], tmp_path / "bare_native")
    (bare_native / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no weights"):
        load_pretrained(bare_native)
    assert type(load_pretrained(bare_native, allow_random_init=True)[0]).__name__ == "LlamaForCausalLM"


def edit_bin(folder: Path, fn) -> None:
    state = thudm_state(folder)
    fn(state)
    torch.save(state, folder / "pytorch_model.bin")


QKV = "transformer.encoder.layers.1.self_attention.query_key_value.weight"


@pytest.mark.parametrize("case,message", [
    ("missing", f"pytorch_model.bin: weight '{QKV}' missing"),
    ("extra", "pytorch_model.bin: unexpected weight 'transformer.encoder.layers.9.mlp.dense_4h_to_h.weight'"),
    ("shape", f"pytorch_model.bin: weight '{QKV}' has shape"),
    ("corrupt", "pytorch_model.bin: corrupt or unsafe .bin file"),
    ("tokenizer", "tokenizer.model: tokenizer file not found"),
    ("shard", "shard pytorch_model-00002-of-00002.bin"),
])
def test_bad_thudm_folders_give_one_line_errors_naming_file_and_key(v3_folder, tmp_path, case, message):
    folder = copy_folder(v3_folder, tmp_path / case)
    if case == "missing":
        edit_bin(folder, lambda s: s.pop(QKV))
    elif case == "extra":
        edit_bin(folder, lambda s: s.__setitem__("transformer.encoder.layers.9.mlp.dense_4h_to_h.weight",
                                                 torch.zeros(2)))
    elif case == "shape":
        edit_bin(folder, lambda s: s.__setitem__(QKV, torch.zeros(60, 32)))
    elif case == "corrupt":
        data = (folder / "pytorch_model.bin").read_bytes()
        (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    elif case == "tokenizer":
        (folder / "tokenizer.model").unlink()
    elif case == "shard":
        state = thudm_state(folder)
        (folder / "pytorch_model.bin").unlink()
        torch.save({k: v for k, v in state.items() if k != QKV}, folder / "pytorch_model-00001-of-00002.bin")
        weight_map = dict.fromkeys(state, "pytorch_model-00001-of-00002.bin")
        weight_map[QKV] = "pytorch_model-00002-of-00002.bin"
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ModelError) as err:
        load_pretrained(folder)
    text = str(err.value)
    assert message in text and "\n" not in text


def test_pickled_code_in_a_bin_is_refused(v3_folder, tmp_path):
    folder = copy_folder(v3_folder, tmp_path / "evil")
    torch.save({"x": torch.zeros(1), "obj": Path("/")}, folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match="weights_only"):
        load_pretrained(folder)


def test_native_folder_with_a_missing_weight_is_named(native_folders, tmp_path):
    folder = copy_folder(native_folders["llama"], tmp_path / "llama_missing")
    state = load_file(folder / "model.safetensors")
    state.pop("model.norm.weight")
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match="model.norm.weight"):
        load_pretrained(folder)


def test_rope_ratio_folder_loads_with_scaled_rotary_base(v3_folder, v3_logits, tmp_path):
    folder = copy_folder(v3_folder, tmp_path / "32k")
    cfg = json.loads((folder / "config.json").read_text()) | {"rope_ratio": 50, "seq_length": 32768}
    (folder / "config.json").write_text(json.dumps(cfg))
    model, _ = load_pretrained(folder)
    head_dim = model.config.head_dim
    want = 1.0 / (500000.0 ** (torch.arange(0, head_dim // 2, 2, dtype=torch.float) / (head_dim // 2)))
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, want)
    assert not torch.allclose(logits(model), v3_logits)  # the base matters beyond position 0


def test_native_folder_without_tokenizer_files_is_a_model_error(native_folders, tmp_path):
    folder = copy_folder(native_folders["gpt2"], tmp_path / "notok")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(ModelError, match="no tokenizer files"):
        load_pretrained(folder)


def test_remote_code_folder_is_refused_without_running_it(native_folders, tmp_path):
    folder = copy_folder(native_folders["gpt2"], tmp_path / "remote")
    marker = tmp_path / "ran"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    cfg = json.loads((folder / "config.json").read_text()) | {
        "model_type": "evil", "auto_map": {"AutoConfig": "modeling_evil.EvilConfig",
                                           "AutoModelForCausalLM": "modeling_evil.EvilModel"}}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="config.json: transformers cannot load this config without remote code"):
        load_pretrained(folder)
    assert not marker.exists()


def test_unavailable_or_malformed_device_is_a_model_error(v3_folder):
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="device 'cuda' requested"):
            load_pretrained(v3_folder, device="cuda")
    with pytest.raises(ModelError, match="not a torch device"):
        load_pretrained(v3_folder, device="gpu-please")
    with pytest.raises(ModelError, match="dtype 'int7'"):
        load_pretrained(v3_folder, dtype="int7")
