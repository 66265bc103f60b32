"""ChatGLM3 (v3-tiny) through load_pretrained/load_adapter against what THUDM's own code computed."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xfed.models import load_adapter, load_pretrained

from .._helpers import FIXTURES, SECTIONS, check_section

V3 = FIXTURES / "v3-tiny"


def test_v3_folder_loads_as_glm_for_causal_lm(v3_model):
    model, tokenizer = v3_model
    assert type(model).__name__ == "GlmForCausalLM"
    assert model.config.num_key_value_heads == 2 and model.config.head_dim == 8
    assert model.dtype == torch.float32
    assert type(tokenizer).__name__ == "ChatGLM3Tokenizer"


@pytest.mark.parametrize("section", SECTIONS)
def test_forward_loss_and_generation_match_thudm(v3_model, v3_ref, section):
    check_section(v3_model[0], v3_ref, section)


def test_xfl_lora_on_query_key_value_matches_thudm(v3_folder, v3_ref):
    model, _ = load_pretrained(v3_folder)
    peft_model = load_adapter(model, v3_ref_dir(v3_ref, "lora"))
    assert sorted(peft_model.peft_config["default"].target_modules) == ["k_proj", "q_proj", "v_proj"]
    layer = peft_model.base_model.model.model.layers[0].self_attn
    # the same A for q, k and v; B is the fused B's row blocks
    torch.testing.assert_close(layer.q_proj.lora_A["default"].weight, layer.v_proj.lora_A["default"].weight)
    check_section(peft_model, v3_ref, "forward", rows=v3_ref["lora"]["rows"])


def test_thudm_ptuning_checkpoint_matches_thudm(v3_folder, v3_ref):
    model, _ = load_pretrained(v3_folder)
    peft_model = load_adapter(model, v3_ref_dir(v3_ref, "ptuning"))
    assert peft_model.peft_config["default"].num_virtual_tokens == v3_ref["ptuning"]["pre_seq_len"]
    f = v3_ref["forward"]
    ids, mask = torch.tensor(f["input_ids"]), torch.tensor(f["attention_mask"])
    check_section(peft_model, v3_ref, "forward", rows=v3_ref["ptuning"]["rows"])
    # generation with the KV cache follows the same positions as step-by-step full forwards
    with torch.no_grad():
        generated = peft_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
        cur = ids
        for _ in range(3):
            nxt = peft_model(input_ids=cur, attention_mask=torch.cat(
                [mask, torch.ones(2, cur.shape[1] - ids.shape[1], dtype=mask.dtype)], 1)).logits[:, -1].argmax(-1)
            cur = torch.cat([cur, nxt[:, None]], 1)
    assert generated.tolist() == cur.tolist()


def test_ptuning_checkpoint_file_path_loads_too(v3_folder, v3_ref):
    model, _ = load_pretrained(v3_folder)
    peft_model = load_adapter(model, v3_ref_dir(v3_ref, "ptuning") / "pytorch_model.bin")
    check_section(peft_model, v3_ref, "forward", rows=v3_ref["ptuning"]["rows"])


def v3_ref_dir(ref, kind):
    return V3 / (ref["lora"]["dir"] if kind == "lora" else Path(ref["ptuning"]["file"]).parent)
