"""Trainable state as numpy (what is aggregated), loaded in place, saved in PEFT format and resumed."""
import numpy as np
import pytest
import torch

from xfed.errors import JobError, ModelError
from xfed.operators.horizontal_chatglm.adapter_state import (
    PREFIX_TRAINABLE_FILE,
    extract_trainable,
    load_resumable_adapter,
    load_trainable,
    save_adapter,
)
from xfed.operators.horizontal_chatglm.config import Peft
from xfed.operators.horizontal_chatglm.peft_setup import apply_peft

LORA = Peft.model_validate({"LORA": {"r": 4, "target_modules": ["q_proj", "v_proj"], "lora_alpha": 8, "lora_dropout": 0.0}})
PREFIX_PROJ = Peft.model_validate({"PREFIX_TUNING": {"pre_seq_len": 4, "prefix_projection": True, "prefix_hidden_size": 16}})


def _base(tiny_glm):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_glm)).eval()


def _perturb(peft_model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.5)


def _ids():
    return torch.tensor([[5, 6, 7, 8, 9]])


def test_projected_prefix_aggregates_embedding_and_mlp_not_the_projection(tiny_glm):
    peft_model = apply_peft(_base(tiny_glm), PREFIX_PROJ)
    tensors = extract_trainable(peft_model)
    shapes = {k.split("default.")[-1]: v.shape for k, v in tensors.items()}
    assert shapes["embedding.weight"] == (4, 16)  # not (4, 2·layers·hidden) as get_peft_model_state_dict gives
    assert {"transform.0.weight", "transform.2.weight"} <= set(shapes)
    assert all(v.dtype == np.float32 for v in tensors.values())


def test_load_in_place_keeps_parameter_objects_and_checks_shapes(tiny_glm):
    peft_model = apply_peft(_base(tiny_glm), LORA)
    before = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    tensors = {k: np.full_like(v, 0.25) for k, v in extract_trainable(peft_model).items()}
    load_trainable(peft_model, tensors, source="test")
    after = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert all(before[n] is after[n] for n in before)  # the optimizer's references stay valid
    assert all(torch.all(p == 0.25) for p in after.values())
    name = next(iter(tensors))
    with pytest.raises(JobError, match="has shape"):
        load_trainable(peft_model, {**tensors, name: np.zeros((1, 1), np.float32)}, source="test")
    with pytest.raises(JobError, match="missing"):
        load_trainable(peft_model, {k: v for k, v in tensors.items() if k != name}, source="test")


@pytest.mark.parametrize("peft", [LORA, PREFIX_PROJ, Peft.model_validate({"PREFIX_TUNING": {"pre_seq_len": 3}})],
                         ids=["lora", "prefix-projection", "prefix"])
def test_saved_adapter_loads_with_plain_peft_and_gives_the_same_logits(tiny_glm, tmp_path, peft):
    from peft import PeftModel

    peft_model = apply_peft(_base(tiny_glm), peft)
    _perturb(peft_model)
    peft_model.eval()
    expected = peft_model(input_ids=_ids()).logits
    save_adapter(peft_model, tmp_path / "a")
    loaded = PeftModel.from_pretrained(_base(tiny_glm), str(tmp_path / "a")).eval()
    assert torch.allclose(loaded(input_ids=_ids()).logits, expected, atol=1e-5)
    generated = loaded.generate(input_ids=_ids(), max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 8)


@pytest.mark.parametrize("peft", [LORA, PREFIX_PROJ], ids=["lora", "prefix-projection"])
def test_resume_continues_from_the_trainable_state(tiny_glm, tmp_path, peft):
    kind = peft.kind
    peft_model = apply_peft(_base(tiny_glm), peft)
    _perturb(peft_model)
    saved = extract_trainable(peft_model)
    save_adapter(peft_model, tmp_path / "a")
    resumed = apply_peft(_base(tiny_glm), peft, adapter_path=tmp_path / "a")
    state = extract_trainable(resumed)
    assert sorted(state) == sorted(saved)
    assert all(np.allclose(state[k], saved[k]) for k in saved)
    assert all(p.requires_grad for n, p in resumed.named_parameters() if n in saved)
    with pytest.raises(ModelError, match="adapter is"):
        load_resumable_adapter(_base(tiny_glm), tmp_path / "a", expected_kind="LORA" if kind != "LORA" else "PREFIX_TUNING")


def test_projected_prefix_without_trainable_state_cannot_resume(tiny_glm, tmp_path):
    peft_model = apply_peft(_base(tiny_glm), PREFIX_PROJ)
    save_adapter(peft_model, tmp_path / "a")
    (tmp_path / "a" / PREFIX_TRAINABLE_FILE).unlink()
    with pytest.raises(ModelError, match="inference form"):
        apply_peft(_base(tiny_glm), PREFIX_PROJ, adapter_path=tmp_path / "a")
