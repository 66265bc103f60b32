"""ChatGLM-6B against what THUDM's own code computed for v1-tiny (README tolerances)."""
from __future__ import annotations

import pytest
import torch

from xfed.models.chatglm import ChatGLM6BForCausalLM, ChatGLM6BTokenizer

from .._helpers import SECTIONS, check_section


def test_thudm_folder_loads_as_native_classes_in_float32(v1_loaded):
    model, tok = v1_loaded
    assert isinstance(model, ChatGLM6BForCausalLM) and isinstance(tok, ChatGLM6BTokenizer)
    assert model.dtype == torch.float32 and not model.training
    assert model.lm_head.weight is model.transformer.word_embeddings.weight


@pytest.mark.parametrize("section", SECTIONS)
def test_forward_loss_and_generation_match_thudm(v1_loaded, v1_ref, section):
    check_section(v1_loaded[0], v1_ref, section)


def test_tokenize_ids_and_decoded_text_equal_thudm(v1_loaded, v1_ref):
    _, tok = v1_loaded
    for row in v1_ref["tokenize"]:
        ids = tok.encode(row["text"])
        assert ids == row["ids"], row["text"]
        assert tok.decode(ids) == row["decoded"], row["text"]


def test_tokenizer_pads_on_the_left_like_the_reference_batch(v1_loaded, v1_ref):
    _, tok = v1_loaded
    fwd = v1_ref["forward"]
    texts = [tok.decode([i for i in row if i != tok.pad_token_id][:-2]) for row in fwd["input_ids"]]
    batch = tok(texts, padding=True)
    assert batch["input_ids"] == fwd["input_ids"]
    assert batch["attention_mask"] == fwd["attention_mask"]
