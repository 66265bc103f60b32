"""ChatGLM3 (v3-tiny) through load_pretrained/load_adapter against what THUDM's own code computed."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xfed.models import load_adapter, load_pretrained

V3 = Path(__file__).resolve().parents[3].parent / "shared" / "fixtures" / "chatglm" / "v3-tiny"
LOGIT_ATOL = 1e-3
LOSS_RTOL = 1e-4


def assert_rows(rows, logits, probe_ids):
    for b, row in enumerate(rows):
        got = logits[b, row["positions"]]
        assert got.argmax(-1).tolist() == row["argmax"], f"row {b} argmax"
        torch.testing.assert_close(torch.logsumexp(got, -1), torch.tensor(row["logsumexp"]), atol=LOGIT_ATOL, rtol=0)
        torch.testing.assert_close(got[:, probe_ids], torch.tensor(row["probe"]), atol=LOGIT_ATOL, rtol=0)


def test_v3_folder_loads_as_glm_for_causal_lm(v3_model):
    model, tokenizer = v3_model
    assert type(model).__name__ == "GlmForCausalLM"
    assert model.config.num_key_value_heads == 2 and model.config.head_dim == 8
    assert model.dtype == torch.float32
    assert type(tokenizer).__name__ == "ChatGLM3Tokenizer"


def test_forward_left_padded_batch_matches_thudm(v3_model, v3_ref):
    model, _ = v3_model
    f = v3_ref["forward"]
    with torch.no_grad():
        out = model(input_ids=torch.tensor(f["input_ids"]), attention_mask=torch.tensor(f["attention_mask"]))
    assert_rows(f["rows"], out.logits, v3_ref["probe_ids"])


def test_forward_single_without_mask_matches_thudm(v3_model, v3_ref):
    model, _ = v3_model
    f = v3_ref["forward_single"]
    with torch.no_grad():
        out = model(input_ids=torch.tensor(f["input_ids"]))
    assert_rows(f["rows"], out.logits, v3_ref["probe_ids"])


def test_train_loss_matches_thudm(v3_model, v3_ref):
    model, _ = v3_model
    t = v3_ref["train_loss"]
    with torch.no_grad():
        out = model(input_ids=torch.tensor(t["input_ids"]), attention_mask=torch.tensor(t["attention_mask"]),
                    labels=torch.tensor(t["labels"]))
    assert out.loss.item() == pytest.approx(t["loss"], rel=LOSS_RTOL)


def test_greedy_generation_matches_thudm(v3_model, v3_ref):
    model, _ = v3_model
    g = v3_ref["generate"]
    ids = torch.tensor(g["input_ids"])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.tensor(g["attention_mask"]),
                             max_new_tokens=g["max_new_tokens"], do_sample=False)
    assert out[:, ids.shape[1]:].tolist() == g["output_ids"]


def test_xfl_lora_on_query_key_value_matches_thudm(v3_folder, v3_ref):
    model, _ = load_pretrained(v3_folder)
    peft_model = load_adapter(model, v3_ref_dir(v3_ref, "lora"))
    assert sorted(peft_model.peft_config["default"].target_modules) == ["k_proj", "q_proj", "v_proj"]
    layer = peft_model.base_model.model.model.layers[0].self_attn
    # the same A for q, k and v; B is the fused B's row blocks
    torch.testing.assert_close(layer.q_proj.lora_A["default"].weight, layer.v_proj.lora_A["default"].weight)
    f = v3_ref["forward"]
    with torch.no_grad():
        out = peft_model(input_ids=torch.tensor(f["input_ids"]), attention_mask=torch.tensor(f["attention_mask"]))
    assert_rows(v3_ref["lora"]["rows"], out.logits, v3_ref["probe_ids"])


def test_thudm_ptuning_checkpoint_matches_thudm(v3_folder, v3_ref):
    model, _ = load_pretrained(v3_folder)
    peft_model = load_adapter(model, v3_ref_dir(v3_ref, "ptuning"))
    assert peft_model.peft_config["default"].num_virtual_tokens == v3_ref["ptuning"]["pre_seq_len"]
    f = v3_ref["forward"]
    ids, mask = torch.tensor(f["input_ids"]), torch.tensor(f["attention_mask"])
    with torch.no_grad():
        out = peft_model(input_ids=ids, attention_mask=mask)
    assert_rows(v3_ref["ptuning"]["rows"], out.logits, v3_ref["probe_ids"])
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
    f = v3_ref["forward"]
    with torch.no_grad():
        out = peft_model(input_ids=torch.tensor(f["input_ids"]), attention_mask=torch.tensor(f["attention_mask"]))
    assert_rows(v3_ref["ptuning"]["rows"], out.logits, v3_ref["probe_ids"])


def v3_ref_dir(ref, kind):
    return V3 / (ref["lora"]["dir"] if kind == "lora" else Path(ref["ptuning"]["file"]).parent)
