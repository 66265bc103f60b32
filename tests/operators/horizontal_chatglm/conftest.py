"""Fixtures for the operator's tests: a tiny random GLM with a character tokenizer, built in seconds."""
from __future__ import annotations

import pytest

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 +-=?:.,\n问答："


def build_tiny_glm(out, seed: int = 0, hidden: int = 32):
    """Save a 2-layer GlmForCausalLM and a WordLevel character tokenizer to `out` (save_pretrained)."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import GlmConfig, GlmForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for ch in CHARS:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    fast.save_pretrained(str(out))
    torch.manual_seed(seed)
    config = GlmConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, pad_token_id=0,
                       eos_token_id=1, bos_token_id=None, max_position_embeddings=128)
    GlmForCausalLM(config).save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_glm(tmp_path_factory):
    """Path of a tiny GLM folder (model + tokenizer), shared by the session."""
    return build_tiny_glm(tmp_path_factory.mktemp("tiny-glm"))


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)
