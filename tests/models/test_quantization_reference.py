"""THUDM int4 checkpoints (v1-int4-tiny: ChatGLM-6B, v3-int4-tiny: ChatGLM3) through load_pretrained /
load_adapter against what THUDM's own quantized code computed (README tolerances), and fp16 folders
quantized on load (`quantization_bit`) against the folders THUDM's code saved."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from xfed.models import load_adapter, load_pretrained
from xfed.models.quantization import QuantizedLinear

from ._helpers import FIXTURES, SECTIONS, check_section, make_thudm_folder

QUANTIZED = ("v1-int4-tiny", "v3-int4-tiny")


def _ref(name: str) -> dict:
    path = FIXTURES / name / "reference.json"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name in QUANTIZED:
        _ref(name)
        out[name] = make_thudm_folder(FIXTURES / name, tmp_path_factory.mktemp(name) / name)
    return out


@pytest.fixture(scope="module")
def fp16_twins(tmp_path_factory) -> dict[str, Path]:
    """The fp16 folders THUDM's code quantized (same recipe without the quantization step)."""
    out = {}
    for name in QUANTIZED:
        ref = _ref(name)
        fixture = tmp_path_factory.mktemp(name + "-fp16-recipe")
        for key in ("quantization_bit", "quantization"):
            ref.pop(key)
        ref["config"] = {k: v for k, v in ref["config"].items() if not k.startswith("quantization")}
        (fixture / "reference.json").write_text(json.dumps(ref), encoding="utf-8")
        out[name] = make_thudm_folder(fixture, tmp_path_factory.mktemp(name + "-fp16") / name)
    return out


@pytest.fixture(scope="module")
def loaded(folders):
    return {name: load_pretrained(folder) for name, folder in folders.items()}


@pytest.mark.parametrize("name", QUANTIZED)
def test_int4_folder_loads_packed_and_float32(loaded, name):
    model, _ = loaded[name]
    quantized = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    per_layer = 4 if name.startswith("v1") else 6  # ChatGLM2/3's query_key_value is split into q, k, v
    assert len(quantized) == per_layer * 2
    assert all(m.weight.dtype == torch.int8 and m.weight.shape[1] * 2 == m.in_features for m in quantized)
    assert all(m.weight_scale.dtype == torch.float16 for m in quantized)
    assert model.dtype == torch.float32 and model.config.quantization_bit == 4


@pytest.mark.parametrize("section", SECTIONS)
@pytest.mark.parametrize("name", QUANTIZED)
def test_forward_loss_and_generation_match_thudm(loaded, name, section):
    check_section(loaded[name][0], _ref(name), section)


@pytest.mark.parametrize("name", QUANTIZED)
def test_tokenizer_ids_match_thudm(loaded, name):
    ref, tok = _ref(name), loaded[name][1]
    for row in ref["tokenize"]:
        assert tok.encode(row["text"]) == row["ids"], row["text"]


@pytest.mark.parametrize("name", QUANTIZED)
def test_thudm_ptuning_checkpoint_on_the_int4_base_matches_thudm(folders, name):
    ref = _ref(name)
    model, _ = load_pretrained(folders[name])
    peft_model = load_adapter(model, FIXTURES / name / Path(ref["ptuning"]["file"]).parent)
    assert peft_model.peft_config["default"].num_virtual_tokens == ref["ptuning"]["pre_seq_len"]
    check_section(peft_model, ref, "forward", rows=ref["ptuning"]["rows"])


@pytest.mark.parametrize("name", QUANTIZED)
def test_quantizing_the_fp16_folder_on_load_equals_thudms_saved_int4(loaded, fp16_twins, name):
    """v1: THUDM's ChatGLM-6B CPU quantize() (fp32 division); v3: ChatGLM2/3's half_weight_to_int (fp16)."""
    model, _ = load_pretrained(fp16_twins[name], quantization_bit=4)
    want = loaded[name][0].state_dict()
    got = model.state_dict()
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
    check_section(model, _ref(name), "forward")


def test_an_fp16_twin_loads_unquantized_without_the_option(fp16_twins):
    model, _ = load_pretrained(fp16_twins["v3-int4-tiny"])
    assert not any(isinstance(m, QuantizedLinear) for m in model.modules())


def test_sharded_int4_folder_with_fp32_scales_loads_the_same(folders, loaded, tmp_path):
    """THUDM's CPU quantize() saves fp32 scales; shards with an index are read like a single file."""
    src = folders["v1-int4-tiny"]
    out = tmp_path / "sharded"
    shutil.copytree(src, out)
    state = torch.load(out / "pytorch_model.bin", weights_only=True)
    (out / "pytorch_model.bin").unlink()
    state = {k: v.float() if k.endswith("_scale") else v for k, v in state.items()}
    keys = sorted(state)
    index = {"weight_map": {}}
    for i in range(2):
        fn = f"pytorch_model-{i + 1:05d}-of-00002.bin"
        torch.save({k: state[k] for k in keys[i::2]}, out / fn)
        index["weight_map"].update({k: fn for k in keys[i::2]})
    (out / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    model, _ = load_pretrained(out)
    scales = [m.weight_scale for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert scales and all(s.dtype == torch.float32 for s in scales)
    check_section(model, _ref("v1-int4-tiny"), "forward")


@pytest.mark.parametrize("name", QUANTIZED)
def test_int8_folder_made_with_thudms_recipe_equals_int8_on_load_and_tracks_fp32(fp16_twins, tmp_path, name):
    """8-bit: int8 (out, in), one value per byte; the generator's THUDM arithmetic with bits 8."""
    ref = _ref(name)
    ref["quantization"]["bits"] = ref["quantization_bit"] = ref["config"]["quantization_bit"] = 8
    fixture = tmp_path / "int8-recipe"
    fixture.mkdir()
    (fixture / "reference.json").write_text(json.dumps(ref), encoding="utf-8")
    int8_model, _ = load_pretrained(make_thudm_folder(fixture, tmp_path / "int8"))
    on_load, _ = load_pretrained(fp16_twins[name], quantization_bit=8)
    float_model, _ = load_pretrained(fp16_twins[name])
    int4_model, _ = load_pretrained(fp16_twins[name], quantization_bit=4)
    want = on_load.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in int8_model.state_dict().items())
    layers = [m for m in int8_model.modules() if isinstance(m, QuantizedLinear)]
    assert all(m.bits == 8 and m.weight.shape == (m.out_features, m.in_features) for m in layers)
    ids = torch.tensor(ref["forward"]["input_ids"])
    mask = torch.tensor(ref["forward"]["attention_mask"]).bool()
    with torch.no_grad():
        exact = float_model(input_ids=ids, attention_mask=mask).logits[mask]
        err8 = (int8_model(input_ids=ids, attention_mask=mask).logits[mask] - exact).abs().mean().item()
        err4 = (int4_model(input_ids=ids, attention_mask=mask).logits[mask] - exact).abs().mean().item()
    # these random weights (gain 2-4) amplify any error; 8 bits still land ~10x closer than 4 bits
    assert err8 < err4 / 5, (err8, err4)
