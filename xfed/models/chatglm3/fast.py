"""tokenizer.json equal to THUDM's ChatGLM2/3 tokenizer, so plain transformers tokenizes saved copies right.

Without it, AutoTokenizer in an environment without xfed would silently convert tokenizer.model
its own way for model_type glm (no [gMASK]sop prefix, other ids). The SentencePiece model is BPE
with byte fallback, a dummy prefix and no whitespace folding: the `tokenizers` pipeline below
gives identical ids (checked on THUDM's reference texts and thousands of random strings). Command
and role tokens sit in the vocabulary without merges, so like THUDM's default they are produced by
the [gMASK]sop template and chat code only, never from user text.
"""
from __future__ import annotations

import functools
import hashlib

from tokenizers import Tokenizer, decoders, models, normalizers, processors


@functools.lru_cache(maxsize=4)
def _bpe_parts(digest: str, vocab_file: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    # keyed by content: the same tokenizer.model saved into several folders is converted once (~2 s)
    from transformers.tokenization_utils_sentencepiece import SentencePieceExtractor

    vocab, _scores, merges = SentencePieceExtractor(vocab_file).extract()
    return vocab, merges


def build_fast_tokenizer(vocab_file: str, command_ids: dict[str, int], eos_id: int = 2) -> Tokenizer:
    """A `tokenizers.Tokenizer` giving THUDM's ids for `vocab_file` plus `command_ids`."""
    with open(vocab_file, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    vocab, merges = _bpe_parts(digest, vocab_file)
    vocab = dict(vocab)
    vocab.update(command_ids)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    gmask, sop = command_ids["[gMASK]"], command_ids["sop"]
    tok.post_processor = processors.TemplateProcessing(
        single="[gMASK] sop $A", pair="[gMASK] sop $A $B </s>",
        special_tokens=[("[gMASK]", gmask), ("sop", sop), ("</s>", eos_id)])
    return tok
