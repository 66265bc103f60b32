"""A party's local set-up: model loading errors are one line naming the key or folder."""
from types import SimpleNamespace

import pytest

from xfed.errors import ConfigError, ModelError
from xfed.operators.horizontal_chatglm.party import load_base_model


def _stage(path, **options):
    return SimpleNamespace(input=SimpleNamespace(pretrained_model=SimpleNamespace(path=str(path)) if path else None),
                           model_info=SimpleNamespace(config=options))


def test_quantised_base_on_cpu_is_refused_with_the_reason(tiny_glm):
    with pytest.raises(ConfigError, match="load_in_8bit: a 4/8-bit bitsandbytes base model needs a CUDA GPU.*"
                                          "use quantization_bit 4 or 8"):
        load_base_model(_stage(tiny_glm, load_in_8bit=True), use_cpu=True)


def test_missing_model_path_names_the_key():
    with pytest.raises(ConfigError, match="input.pretrained_model.path: required"):
        load_base_model(_stage(None), use_cpu=True)


def test_folder_without_weights_is_an_error_not_a_random_model(tiny_glm, tmp_path):
    import shutil

    folder = tmp_path / "no-weights"
    shutil.copytree(tiny_glm, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError) as info:
        load_base_model(_stage(folder), use_cpu=True)
    assert "\n" not in str(info.value) and str(folder) in str(info.value)


def test_base_model_loads_in_float32_on_cpu(tiny_glm):
    import torch

    model, tokenizer, folder = load_base_model(_stage(tiny_glm), use_cpu=True)
    assert next(model.parameters()).dtype == torch.float32 and tokenizer.pad_token_id is not None
    assert folder == tiny_glm


def _int4_folder(tmp_path):
    from tests.models._helpers import FIXTURES, make_thudm_folder

    if not (FIXTURES / "v3-int4-tiny").is_dir():
        pytest.skip("v3-int4-tiny fixture not present")
    return make_thudm_folder(FIXTURES / "v3-int4-tiny", tmp_path / "chatglm3-int4")


def test_thudm_int4_folder_and_quantization_bit_option_load_packed(tmp_path):
    from xfed.models.quantization import QuantizedLinear

    folder = _int4_folder(tmp_path)
    model, _, _ = load_base_model(_stage(folder), use_cpu=True)
    assert sum(isinstance(m, QuantizedLinear) for m in model.modules()) == 12
    with pytest.raises(ModelError, match="already quantized to 4 bits; quantization_bit 8"):
        load_base_model(_stage(folder, quantization_bit=8), use_cpu=True)
    with pytest.raises(ConfigError, match="model_info.config.quantization_bit: 3 is not 4 or 8"):
        load_base_model(_stage(folder, quantization_bit=3), use_cpu=True)


def test_a_model_that_cannot_fit_is_refused_with_what_would_fit(tmp_path, monkeypatch):
    import xfed.models.memory as memory

    folder = _int4_folder(tmp_path)
    monkeypatch.setattr(memory, "MIN_HEADROOM", 0)
    need = memory.needed_bytes(memory.estimate_bytes(folder, __import__("torch").float32))
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: need - 1)
    with pytest.raises(ModelError) as info:
        load_base_model(_stage(folder, dtype="float32"), use_cpu=True)
    msg = str(info.value)
    assert "\n" not in msg and str(folder) in msg and "(float32, " not in msg
    assert "GB (float32) but" in msg and "would fit: dtype bfloat16" in msg


def test_cpu_default_dtype_is_bf16_for_large_models_where_the_cpu_has_it(tmp_path, monkeypatch):
    import torch

    import xfed.models.memory as memory

    folder = _int4_folder(tmp_path)
    assert memory.choose_cpu_dtype(folder) == torch.float32  # small: exact fp32
    monkeypatch.setattr(memory, "BF16_DEFAULT_ABOVE", 0)
    monkeypatch.setattr(memory, "cpu_has_bf16", lambda: True)
    assert memory.choose_cpu_dtype(folder) == torch.bfloat16
    model, _, _ = load_base_model(_stage(folder), use_cpu=True)
    assert model.dtype == torch.bfloat16
    monkeypatch.setattr(memory, "cpu_has_bf16", lambda: False)
    assert memory.choose_cpu_dtype(folder) == torch.float32
