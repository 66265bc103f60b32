"""load_skeleton: an adapter on the weightless (meta) model has the real model's layout and saves the same files."""
from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PrefixTuningConfig, TaskType
from safetensors.torch import load_file

from xfed.models import load_pretrained, make_peft_model
from xfed.models.skeleton import load_skeleton, materialize_trainable

CONFIGS = {
    "lora": lambda: LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, target_modules="all-linear"),
    "prefix_projection": lambda: PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3,
                                                    prefix_projection=True, encoder_hidden_size=8),
}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
@pytest.mark.parametrize("which", ["v1", "v3"])
def test_adapter_on_the_skeleton_matches_the_real_model_and_saves_the_same(which, kind, v1_folder_any, v3_folder,
                                                                           tmp_path):
    folder = v1_folder_any if which == "v1" else v3_folder
    skeleton, tok = load_skeleton(folder)
    assert all(p.is_meta for p in skeleton.parameters())
    real, real_tok = load_pretrained(folder)
    assert tok.encode("hello") == real_tok.encode("hello")
    torch.manual_seed(0)
    on_real = make_peft_model(real, CONFIGS[kind]())
    on_skeleton = make_peft_model(skeleton, CONFIGS[kind]())
    allocated = materialize_trainable(on_skeleton)
    want = {n: p for n, p in on_real.named_parameters() if p.requires_grad}
    got = {n: p for n, p in on_skeleton.named_parameters() if p.requires_grad}
    assert sorted(got) == sorted(want) and all(got[n].shape == want[n].shape for n in want)
    assert allocated == sum(p.numel() * 4 for p in want.values())
    assert not any(p.is_meta for p in got.values())
    with torch.no_grad():
        for name, p in got.items():
            p.copy_(want[name])
    on_real.save_pretrained(tmp_path / "real")
    on_skeleton.save_pretrained(tmp_path / "skeleton")
    a, b = load_file(tmp_path / "real" / "adapter_model.safetensors"), \
        load_file(tmp_path / "skeleton" / "adapter_model.safetensors")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "real" / "adapter_config.json").read_text() == \
        (tmp_path / "skeleton" / "adapter_config.json").read_text()


@pytest.fixture(scope="module")
def v1_folder_any(tmp_path_factory):
    from ._helpers import FIXTURES, make_thudm_folder

    if not (FIXTURES / "v1-tiny").is_dir():
        pytest.skip("v1-tiny fixture not present")
    return make_thudm_folder(FIXTURES / "v1-tiny", tmp_path_factory.mktemp("v1") / "chatglm-6b-tiny")
