"""A party's local set-up: model loading errors are one line naming the key or folder."""
from types import SimpleNamespace

import pytest

from xfed.errors import ConfigError, ModelError
from xfed.operators.horizontal_chatglm.party import load_base_model


def _stage(path, **options):
    return SimpleNamespace(input=SimpleNamespace(pretrained_model=SimpleNamespace(path=str(path)) if path else None),
                           model_info=SimpleNamespace(config=options))


def test_quantised_base_on_cpu_is_refused_with_the_reason(tiny_glm):
    with pytest.raises(ConfigError, match="load_in_8bit: a 4/8-bit base model needs a CUDA GPU"):
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
