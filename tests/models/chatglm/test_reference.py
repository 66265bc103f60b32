"""ChatGLM-6B against what THUDM's own code computed for v1-tiny (README tolerances)."""
from __future__ import annotations

import torch

from xfed.models.chatglm import ChatGLM6BForCausalLM, ChatGLM6BTokenizer

from .conftest import compare_rows


def test_thudm_folder_loads_as_native_classes_in_float32(v1_loaded):
    model, tok = v1_loaded
    assert isinstance(model, ChatGLM6BForCausalLM) and isinstance(tok, ChatGLM6BTokenizer)
    assert model.dtype == torch.float32 and not model.training
    assert model.lm_head.weight is model.transformer.word_embeddings.weight


def test_tokenize_ids_and_decoded_text_equal_thudm(v1_loaded, v1_ref):
    _, tok = v1_loaded
    for row in v1_ref["tokenize"]:
        ids = tok.encode(row["text"])
        assert ids == row["ids"], row["text"]
        assert tok.decode(ids) == row["decoded"], row["text"]


def test_left_padded_batch_forward_matches_thudm(v1_loaded, v1_ref):
    model, tok = v1_loaded
    fwd = v1_ref["forward"]
    with torch.no_grad():
        out = model(input_ids=torch.tensor(fwd["input_ids"]), attention_mask=torch.tensor(fwd["attention_mask"]))
    compare_rows(out.logits, fwd["rows"], v1_ref["probe_ids"])


def test_tokenizer_pads_on_the_left_like_the_reference_batch(v1_loaded, v1_ref):
    _, tok = v1_loaded
    fwd = v1_ref["forward"]
    texts = [tok.decode([i for i in row if i != tok.pad_token_id][:-2]) for row in fwd["input_ids"]]
    batch = tok(texts, padding=True)
    assert batch["input_ids"] == fwd["input_ids"]
    assert batch["attention_mask"] == fwd["attention_mask"]


def test_single_prompt_without_mask_matches_thudm(v1_loaded, v1_ref):
    model, _ = v1_loaded
    single = v1_ref["forward_single"]
    with torch.no_grad():
        out = model(input_ids=torch.tensor(single["input_ids"]))
    compare_rows(out.logits, single["rows"], v1_ref["probe_ids"])


def test_training_loss_matches_thudm(v1_loaded, v1_ref):
    model, _ = v1_loaded
    tl = v1_ref["train_loss"]
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tl["input_ids"]), attention_mask=torch.tensor(tl["attention_mask"]),
                    labels=torch.tensor(tl["labels"]))
    assert abs(out.loss.item() - tl["loss"]) <= 1e-4 * abs(tl["loss"])


def test_greedy_generation_matches_thudm(v1_loaded, v1_ref):
    model, _ = v1_loaded
    gen = v1_ref["generate"]
    ids = torch.tensor(gen["input_ids"])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.tensor(gen["attention_mask"]),
                             max_new_tokens=gen["max_new_tokens"], do_sample=False)
    assert out[:, ids.shape[1]:].tolist() == gen["output_ids"]
