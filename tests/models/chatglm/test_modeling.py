"""Behaviour of the native ChatGLM-6B model: padding, cache, attention backends, save/reload, checkpointing."""
from __future__ import annotations

import torch

from xfed.models.chatglm import v1_position_ids


def _batch(v1_ref):
    fwd = v1_ref["forward"]
    return torch.tensor(fwd["input_ids"]), torch.tensor(fwd["attention_mask"])


def test_positions_count_from_first_real_token_and_freeze_after_sop():
    ids = torch.tensor([[3, 3, 5, 7, 130001, 130004, 9, 11]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])
    pos = v1_position_ids(ids, mask, bos_token_id=130004, mask_token_id=130000, gmask_token_id=130001)
    assert pos[0, 0].tolist() == [0, 0, 0, 1, 2, 2, 2, 2]
    assert pos[0, 1].tolist() == [0, 0, 0, 0, 0, 1, 2, 3]


def test_mask_token_takes_precedence_and_no_sop_means_all_context():
    kw = dict(bos_token_id=130004, mask_token_id=130000, gmask_token_id=130001)
    ids = torch.tensor([[5, 130000, 7, 130001, 130004, 9]])
    pos = v1_position_ids(ids, None, **kw)
    assert pos[0, 0].tolist() == [0, 1, 2, 3, 1, 1] and pos[0, 1].tolist() == [0, 0, 0, 0, 1, 2]
    plain = v1_position_ids(torch.tensor([[5, 6, 7]]), None, **kw)
    assert plain[0].tolist() == [[0, 1, 2], [0, 0, 0]]


def test_left_padded_row_equals_the_unpadded_row(v1_loaded, v1_ref):
    model, tok = v1_loaded
    ids, mask = _batch(v1_ref)
    pad = int((mask[0] == 0).sum())
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits[0, pad:]
        alone = model(input_ids=ids[:1, pad:]).logits[0]
    assert torch.allclose(batched, alone, atol=1e-4, rtol=0)


def test_prefix_lm_attention_context_is_bidirectional_answer_is_causal(v1_loaded):
    model, _ = v1_loaded
    ids = torch.tensor([[5, 64286, 12, 130001, 130004, 5, 74874, 35]])
    changed = ids.clone()
    changed[0, 2] = 74874       # a context token: every position sees it
    answer_changed = ids.clone()
    answer_changed[0, 6] = 12   # an answer token: only later positions see it
    with torch.no_grad():
        a, b, c = (model(input_ids=x).logits[0] for x in (ids, changed, answer_changed))
    assert not torch.allclose(a[0], b[0])          # position 0 attends to position 2 (bidirectional)
    assert torch.allclose(a[:6], c[:6], atol=1e-5)  # nothing before position 6 sees it
    assert not torch.allclose(a[6], c[6])


def test_kv_cache_generation_equals_recomputing_without_cache(v1_loaded, v1_ref):
    model, _ = v1_loaded
    ids, mask = _batch(v1_ref)
    with torch.no_grad():
        cached = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
        uncached = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                                  use_cache=False)
        full = model(input_ids=cached, attention_mask=torch.cat([mask, torch.ones(2, 5, dtype=mask.dtype)], 1))
        step = model(input_ids=ids, attention_mask=mask, use_cache=True)
        nxt = model(input_ids=cached[:, ids.shape[1]:ids.shape[1] + 1],
                    attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1),
                    past_key_values=step.past_key_values, use_cache=True)
    assert torch.equal(cached, uncached)
    assert torch.allclose(nxt.logits[:, -1], full.logits[:, ids.shape[1]], atol=1e-4, rtol=0)


def test_eager_and_sdpa_attention_agree(v1_fresh, v1_ref):
    model, _ = v1_fresh
    ids, mask = _batch(v1_ref)
    with torch.no_grad():
        sdpa = model(input_ids=ids, attention_mask=mask).logits
        model.config._attn_implementation = "eager"
        eager = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    real = mask.bool()
    assert torch.allclose(sdpa[real], eager.logits[real], atol=1e-4, rtol=0)
    assert len(eager.attentions) == model.config.num_hidden_layers


def test_save_pretrained_reloads_through_auto_classes_with_same_logits(v1_loaded, v1_ref, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = v1_loaded
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    ids, mask = _batch(v1_ref)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        got = again(input_ids=ids, attention_mask=mask).logits
    assert type(again) is type(model) and type(tok2) is type(tok)
    assert torch.equal(want, got)
    text = "问：你好\n答：  x\ty"
    assert tok2.encode(text) == tok.encode(text)
    assert tok2.padding_side == "left"


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(v1_fresh, v1_ref):
    model, _ = v1_fresh
    tl = v1_ref["train_loss"]
    batch = {k: torch.tensor(tl[k]) for k in ("input_ids", "attention_mask", "labels")}
    model.train()
    plain = model(**batch).loss
    plain.backward()
    want = model.transformer.layers[0].attention.query_key_value.weight.grad.clone()
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.transformer.layers)
    ckpt = model(**batch).loss
    ckpt.backward()
    got = model.transformer.layers[0].attention.query_key_value.weight.grad
    assert torch.allclose(plain, ckpt) and torch.allclose(want, got, atol=1e-6)


def test_fp16_weights_cast_on_request_and_still_track_float32(v1_folder, v1_loaded, v1_ref):
    from xfed.models.chatglm import from_thudm_folder

    half, _ = from_thudm_folder(v1_folder, dtype="bfloat16")
    ids = torch.tensor(v1_ref["forward_single"]["input_ids"])
    with torch.no_grad():
        low = half(input_ids=ids).logits.float()
        ref = v1_loaded[0](input_ids=ids).logits
    assert half.dtype == torch.bfloat16
    assert (low.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.75


def test_generate_with_thudm_position_ids_equals_derived_positions(v1_loaded, v1_ref):
    model, _ = v1_loaded
    ids, mask = _batch(v1_ref)
    cfg = model.config
    pos = v1_position_ids(ids, mask, bos_token_id=cfg.bos_token_id, mask_token_id=cfg.mask_token_id,
                          gmask_token_id=cfg.gmask_token_id)
    with torch.no_grad():
        derived = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
        given = model.generate(input_ids=ids, attention_mask=mask, position_ids=pos, max_new_tokens=4,
                               do_sample=False)
    assert torch.equal(derived, given)


def test_position_ids_of_the_wrong_layout_are_refused(v1_loaded, v1_ref):
    import pytest

    model, _ = v1_loaded
    ids, mask = _batch(v1_ref)
    with pytest.raises(ValueError, match=r"\[batch, 2, seq\]"):
        model(input_ids=ids, attention_mask=mask, position_ids=torch.arange(ids.shape[1]).expand(2, -1))
