"""THUDM P-tuning v2 and XFL LoRA on ChatGLM-6B with THUDM's semantics, against the v1-tiny reference."""
from __future__ import annotations

import pytest
import torch

from xfed.errors import ModelError
from xfed.models.chatglm import load_v1_lora, load_v1_ptuning, v1_prefix_tuning_config

from .._helpers import check_section
from .conftest import V1


def _batch(v1_ref):
    fwd = v1_ref["forward"]
    return torch.tensor(fwd["input_ids"]), torch.tensor(fwd["attention_mask"])


def test_thudm_ptuning_checkpoint_matches_thudm(v1_fresh, v1_ref):
    model, _ = v1_fresh
    peft_model = load_v1_ptuning(model, V1 / v1_ref["ptuning"]["file"])
    check_section(peft_model, v1_ref, "forward", rows=v1_ref["ptuning"]["rows"])
    assert peft_model.peft_config["default"].num_virtual_tokens == v1_ref["ptuning"]["pre_seq_len"]


def test_ptuning_generation_with_cache_equals_without(v1_fresh, v1_ref):
    model, _ = v1_fresh
    peft_model = load_v1_ptuning(model, V1 / "ptuning")
    ids, mask = _batch(v1_ref)
    with torch.no_grad():
        cached = peft_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
        full = peft_model(input_ids=cached, attention_mask=torch.ones_like(cached).masked_fill(
            torch.nn.functional.pad(mask, (0, 4), value=1) == 0, 0)).logits
    # each generated token is the argmax of the no-cache forward over the prefix it was generated from
    n = ids.shape[1]
    assert torch.equal(full[:, n - 1:n + 3].argmax(-1), cached[:, n:])


def test_xfl_lora_adapter_matches_thudm(v1_fresh, v1_ref):
    model, _ = v1_fresh
    peft_model = load_v1_lora(model, V1 / v1_ref["lora"]["dir"])
    check_section(peft_model, v1_ref, "forward", rows=v1_ref["lora"]["rows"])


def test_projected_prefix_equals_its_materialised_table(v1_folder, v1_ref):
    from xfed.models.chatglm import from_thudm_folder

    torch.manual_seed(0)
    cfg = from_thudm_folder(v1_folder)[0].config
    width, hidden, p = cfg.num_hidden_layers * 2 * cfg.hidden_size, 8, 3
    state = {
        "transformer.prefix_encoder.embedding.weight": torch.randn(p, cfg.hidden_size),
        "transformer.prefix_encoder.trans.0.weight": torch.randn(hidden, cfg.hidden_size),
        "transformer.prefix_encoder.trans.0.bias": torch.randn(hidden),
        "transformer.prefix_encoder.trans.2.weight": torch.randn(width, hidden),
        "transformer.prefix_encoder.trans.2.bias": torch.randn(width),
    }
    table = torch.tanh(state["transformer.prefix_encoder.embedding.weight"] @ state[
        "transformer.prefix_encoder.trans.0.weight"].T + state["transformer.prefix_encoder.trans.0.bias"])
    table = table @ state["transformer.prefix_encoder.trans.2.weight"].T + state["transformer.prefix_encoder.trans.2.bias"]
    projected = load_v1_ptuning(from_thudm_folder(v1_folder)[0], state)
    plain = load_v1_ptuning(from_thudm_folder(v1_folder)[0], {"transformer.prefix_encoder.embedding.weight": table})
    ids, mask = _batch(v1_ref)
    with torch.no_grad():
        a = projected(input_ids=ids, attention_mask=mask).logits
        b = plain(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(a[mask.bool()], b[mask.bool()], atol=1e-4, rtol=0)


def test_prefix_tuning_trains_with_gradient_checkpointing(v1_fresh, v1_ref):
    from peft import get_peft_model

    model, _ = v1_fresh
    peft_model = get_peft_model(model, v1_prefix_tuning_config(model, 4))
    tl = v1_ref["train_loss"]
    batch = {k: torch.tensor(tl[k]) for k in ("input_ids", "attention_mask", "labels")}
    peft_model.train()
    loss = peft_model(**batch).loss
    loss.backward()
    encoder = peft_model.prompt_encoder["default"]
    want = encoder.embedding.weight.grad.clone()
    encoder.zero_grad()
    model.activation_checkpointing_enable()
    loss2 = peft_model(**batch).loss
    loss2.backward()
    assert torch.allclose(loss, loss2)
    assert want.abs().sum() > 0 and torch.allclose(encoder.embedding.weight.grad, want, atol=1e-6)
    assert not any(p.requires_grad for p in model.parameters())


def test_ptuning_with_wrong_width_is_a_one_line_model_error(v1_fresh):
    model, _ = v1_fresh
    with pytest.raises(ModelError, match="prefix_encoder.embedding.weight.*shape") as err:
        load_v1_ptuning(model, {"transformer.prefix_encoder.embedding.weight": torch.zeros(4, 10)}, source="ck.bin")
    assert "\n" not in str(err.value) and "ck.bin" in str(err.value)
    with pytest.raises(ModelError, match="unexpected key 'transformer.other'"):
        load_v1_ptuning(model, {"transformer.prefix_encoder.embedding.weight": torch.zeros(4, 128),
                                "transformer.other": torch.zeros(1)})
