"""Shared fixtures for tests/models: THUDM-layout folders rebuilt from ../shared fixtures, tiny native folders."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ._helpers import FIXTURES, make_thudm_folder

V3 = FIXTURES / "v3-tiny"

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def v3_ref() -> dict:
    return json.loads((V3 / "reference.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def v3_folder(tmp_path_factory) -> Path:
    if not V3.is_dir():
        pytest.skip(f"{V3} not present")
    return make_thudm_folder(V3, tmp_path_factory.mktemp("v3") / "chatglm3-tiny")


@pytest.fixture
def v3_model(v3_folder):
    from xfed.models import load_pretrained
    return load_pretrained(v3_folder)


def word_tokenizer(words: list[str]):
    """A tiny word-level fast tokenizer (tokenizer.json) for native test folders."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "</s>", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")


WORDS = "the cat sat on a mat and dog ran far away".split()


@pytest.fixture(scope="session")
def native_folders(tmp_path_factory) -> dict[str, Path]:
    """Tiny random GPT-2 and Llama folders saved by transformers (safetensors + tokenizer.json)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base = tmp_path_factory.mktemp("native")
    tok = word_tokenizer(WORDS)
    n = len(tok)
    models = {
        "gpt2": GPT2LMHeadModel(GPT2Config(vocab_size=n, n_embd=16, n_layer=1, n_head=2, n_positions=64,
                                           bos_token_id=2, eos_token_id=2, pad_token_id=0)),
        "llama": LlamaForCausalLM(LlamaConfig(vocab_size=n, hidden_size=16, intermediate_size=32,
                                              num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                              max_position_embeddings=64, pad_token_id=0, eos_token_id=2,
                                              bos_token_id=None)),
    }
    out = {}
    for name, model in models.items():
        folder = base / name
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        out[name] = folder
    return out
