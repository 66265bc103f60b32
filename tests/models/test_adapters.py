"""Adapters: target-module resolution, xfed's own adapters round-tripping, prefix semantics, bad adapters."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from xfed.errors import ModelError
from xfed.models import load_adapter, load_pretrained, make_peft_model, resolve_target_modules

V3 = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "chatglm" / "v3-tiny"
IDS = torch.tensor([[0, 0, 64790, 64792, 36474, 54591], [64790, 64792, 13755, 993, 30910, 13]])
MASK = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK).logits


def test_xfl_query_key_value_maps_to_q_k_v_on_converted_glm(v3_model):
    model, _ = v3_model
    assert resolve_target_modules(model, ["query_key_value"]) == ["q_proj", "k_proj", "v_proj"]
    assert resolve_target_modules(model, ["query_key_value", "dense_4h_to_h"]) == \
        ["q_proj", "k_proj", "v_proj", "down_proj"]
    assert resolve_target_modules(model, "auto") == ["q_proj", "k_proj", "v_proj"]
    assert "lm_head" not in resolve_target_modules(model, "all-linear")


def test_unknown_target_module_lists_the_linear_modules(v3_model):
    model, _ = v3_model
    with pytest.raises(ModelError, match="'c_fc' is not a module of GlmForCausalLM; its Linear modules are: "
                                         "down_proj, gate_up_proj, k_proj, lm_head, o_proj, q_proj, v_proj"):
        resolve_target_modules(model, ["c_fc"])


def test_query_key_value_on_gpt2_and_llama(native_folders):
    gpt2, _ = load_pretrained(native_folders["gpt2"])
    llama, _ = load_pretrained(native_folders["llama"])
    assert resolve_target_modules(gpt2, ["query_key_value"]) == ["c_attn"]
    assert resolve_target_modules(llama, ["query_key_value"]) == ["q_proj", "k_proj", "v_proj"]
    assert resolve_target_modules(llama, None) == ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_own_lora_adapter_round_trips_through_save_and_load_adapter(v3_folder, tmp_path):
    from peft import LoraConfig

    model, _ = load_pretrained(v3_folder)
    peft_model = make_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["query_key_value"],
                                                   task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    want = logits(peft_model)
    peft_model.save_pretrained(tmp_path / "lora")
    fresh, _ = load_pretrained(v3_folder)
    got = logits(load_adapter(fresh, tmp_path / "lora"))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_own_prefix_adapter_keeps_thudm_positions_after_save_and_load(v3_folder, tmp_path):
    from peft import PrefixTuningConfig

    model, _ = load_pretrained(v3_folder)
    peft_model = make_peft_model(model, PrefixTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"))
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.normal_()
    want = logits(peft_model)
    # THUDM semantics: the left-padded row equals the same row without padding
    with torch.no_grad():
        alone = peft_model(input_ids=IDS[:1, 2:]).logits
    torch.testing.assert_close(want[0, 2:], alone[0], rtol=0, atol=1e-5)
    peft_model.save_pretrained(tmp_path / "prefix")
    fresh, _ = load_pretrained(v3_folder)
    torch.testing.assert_close(logits(load_adapter(fresh, tmp_path / "prefix")), want, rtol=0, atol=1e-6)


def test_ptuning_checkpoint_with_wrong_width_names_the_key(v3_folder, tmp_path):
    torch.save({"transformer.prefix_encoder.embedding.weight": torch.zeros(4, 60)}, tmp_path / "pytorch_model.bin")
    model, _ = load_pretrained(v3_folder)
    with pytest.raises(ModelError, match="transformer.prefix_encoder.embedding.weight' has shape"):
        load_adapter(model, tmp_path)


def test_projected_ptuning_checkpoint_is_materialised_exactly(v3_folder, tmp_path):
    base = torch.load(V3 / "ptuning" / "pytorch_model.bin", weights_only=True)
    emb = base["transformer.prefix_encoder.embedding.weight"].float()
    torch.manual_seed(1)
    w0, b0 = torch.randn(32, 64) * 0.1, torch.randn(32) * 0.1
    w2, b2 = torch.randn(64, 32) * 0.1, torch.randn(64) * 0.1
    torch.save({"transformer.prefix_encoder.embedding.weight": emb, "transformer.prefix_encoder.trans.0.weight": w0,
                "transformer.prefix_encoder.trans.0.bias": b0, "transformer.prefix_encoder.trans.2.weight": w2,
                "transformer.prefix_encoder.trans.2.bias": b2}, tmp_path / "pytorch_model.bin")
    model, _ = load_pretrained(v3_folder)
    peft_model = load_adapter(model, tmp_path)
    expected = torch.tanh(emb @ w0.T + b0) @ w2.T + b2
    torch.testing.assert_close(peft_model.prompt_encoder["default"].embedding.weight, expected)


def test_lora_adapter_errors(v3_folder, tmp_path):
    model, _ = load_pretrained(v3_folder)
    with pytest.raises(ModelError, match="adapter not found"):
        load_adapter(model, tmp_path / "missing")
    with pytest.raises(ModelError, match="neither a peft adapter"):
        load_adapter(model, tmp_path)
    broken = tmp_path / "lora"
    shutil.copytree(V3 / "lora", broken)
    state = torch.load(broken / "adapter_model.bin", weights_only=True)
    key = "base_model.model.transformer.encoder.layers.0.self_attention.query_key_value.lora_B.weight"
    state[key] = torch.zeros(60, 4)
    torch.save(state, broken / "adapter_model.bin")
    with pytest.raises(ModelError, match=f"adapter_model.bin: adapter weight '{key}' has 60 rows"):
        load_adapter(model, broken)
    cfg = json.loads((broken / "adapter_config.json").read_text()) | {"target_modules": ["nope"]}
    (broken / "adapter_config.json").write_text(json.dumps(cfg))
    fresh, _ = load_pretrained(v3_folder)
    with pytest.raises(ModelError, match="'nope' is not a module"):
        load_adapter(fresh, broken)


@pytest.mark.parametrize("kind", ["lora", "prefix"])
def test_a_training_step_updates_only_the_adapter_and_lowers_the_loss(v3_folder, kind):
    from peft import LoraConfig, PrefixTuningConfig

    torch.manual_seed(0)
    model, _ = load_pretrained(v3_folder)
    config = (LoraConfig(r=4, lora_alpha=8, target_modules=["query_key_value"], task_type="CAUSAL_LM")
              if kind == "lora" else PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"))
    peft_model = make_peft_model(model, config)
    peft_model.train()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    assert trainable and sum(p.numel() for p in trainable) < 5000
    labels = IDS.masked_fill(MASK == 0, -100)
    optim = torch.optim.SGD(trainable, lr=0.5)
    losses = []
    for _ in range(3):
        loss = peft_model(input_ids=IDS, attention_mask=MASK, labels=labels).loss
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
