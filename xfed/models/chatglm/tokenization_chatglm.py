"""ChatGLM-6B tokenizer from THUDM's `ice_text.model`, with THUDM's ids, as a transformers tokenizer.

THUDM's behaviour, reproduced: newlines become `<n>`, tabs `<|tab|>`, runs of 2..80 spaces
`<|blank_N|>`; `encode` appends `[gMASK]` and `<sop>`; padding is on the left; decoding turns the
placeholders back and drops padding. The model file is saved beside the tokenizer config, so
`save_pretrained` / `from_pretrained` round-trip without any remote code.
"""
from __future__ import annotations

import os
import shutil

import sentencepiece as spm
from transformers.tokenization_python import PythonBackend

VOCAB_FILE = "ice_text.model"
MAX_BLANK_LENGTH = 80


def _processor(vocab_file: str) -> tuple[spm.SentencePieceProcessor, dict[str, int]]:
    """A parsed model and its piece -> id table, shared by tokenizers of the same unchanged file
    (parsing the 130k-piece model dominates tokenizer start-up; both objects are only read)."""
    st = os.stat(vocab_file)
    key = (os.path.realpath(vocab_file), st.st_size, st.st_mtime_ns)
    if key not in _PROCESSORS:
        sp = spm.SentencePieceProcessor()
        sp.Load(vocab_file)
        if len(_PROCESSORS) >= 4:
            _PROCESSORS.pop(next(iter(_PROCESSORS)))
        _PROCESSORS[key] = (sp, {sp.IdToPiece(i): i for i in range(sp.vocab_size())})
    return _PROCESSORS[key]


_PROCESSORS: dict[tuple, tuple[spm.SentencePieceProcessor, dict[str, int]]] = {}


def _encode_whitespace(text: str) -> str:
    text = text.replace("\n", "<n>").replace("\t", "<|tab|>")
    for n in range(MAX_BLANK_LENGTH, 1, -1):
        text = text.replace(" " * n, f"<|blank_{n}|>")
    return text


def _decode_whitespace(text: str) -> str:
    text = text.replace("<n>", "\n").replace("<|tab|>", "\t")
    for n in range(2, MAX_BLANK_LENGTH + 1):
        text = text.replace(f"<|blank_{n}|>", " " * n)
    return text


class ChatGLM6BTokenizer(PythonBackend):
    """SentencePiece tokenizer of ChatGLM-6B (130,344 pieces; the model's embedding has 130,528 rows)."""

    vocab_files_names = {"vocab_file": VOCAB_FILE}
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "left"

    def __init__(
        self,
        vocab_file: str,
        bos_token: str = "<sop>",
        eos_token: str = "<eop>",
        end_token: str = "</s>",
        mask_token: str = "[MASK]",
        gmask_token: str = "[gMASK]",
        pad_token: str = "<pad>",
        unk_token: str = "<unk>",
        remove_space: bool = False,
        do_lower_case: bool = False,
        padding_side: str = "left",
        **kwargs,
    ):
        self.vocab_file = vocab_file
        self.sp, self._piece_vocab = _processor(vocab_file)
        self.remove_space = remove_space
        self.do_lower_case = do_lower_case
        self.end_token = end_token
        self.gmask_token = gmask_token
        # THUDM-only keys that mean nothing here (image tokens are 0 in every released ChatGLM-6B)
        for key in ("num_image_tokens", "auto_map", "name_or_path", "tokenizer_class"):
            kwargs.pop(key, None)
        extra = list(kwargs.pop("extra_special_tokens", None) or [])
        if gmask_token not in extra:
            extra.append(gmask_token)
        super().__init__(
            bos_token=bos_token,
            eos_token=eos_token,
            mask_token=mask_token,
            pad_token=pad_token,
            unk_token=unk_token,
            padding_side=padding_side,
            extra_special_tokens=extra,
            **kwargs,
        )

    # --- vocabulary -------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.sp.vocab_size()

    def get_vocab(self) -> dict[str, int]:
        vocab = dict(self._piece_vocab)
        vocab.update(getattr(self, "_added_tokens_encoder", {}))
        return vocab

    @property
    def gmask_token_id(self) -> int:
        return self.sp.PieceToId(self.gmask_token)

    def _convert_token_to_id(self, token: str) -> int:
        return self.sp.PieceToId(token)

    def _convert_id_to_token(self, index: int) -> str:
        return self.sp.IdToPiece(int(index))

    # --- text <-> tokens ------------------------------------------------------------------------------
    def _preprocess(self, text: str) -> str:
        if self.remove_space:
            text = " ".join(text.strip().split())
        if self.do_lower_case:
            text = text.lower()
        return _encode_whitespace(text)

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return self.sp.EncodeAsPieces(self._preprocess(text))

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return _decode_whitespace(self.sp.DecodePieces(tokens))

    def _decode(self, token_ids, skip_special_tokens: bool = False, **kwargs) -> str:
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        token_ids = [int(t) for t in token_ids if int(t) != self.pad_token_id]
        if skip_special_tokens:
            special = set(self.all_special_ids)
            token_ids = [t for t in token_ids if t not in special]
        # control pieces ([gMASK], <sop>, <eop> ...) decode to nothing, as in THUDM's tokenizer
        return _decode_whitespace(self.sp.DecodeIds(token_ids))

    # --- special tokens -------------------------------------------------------------------------------
    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """THUDM's layout: prompt + [gMASK] + <sop> (+ answer + <eop> for a pair)."""
        ids = list(token_ids_0) + [self.gmask_token_id, self.bos_token_id]
        if token_ids_1 is not None:
            ids = ids + list(token_ids_1) + [self.eos_token_id]
        return ids

    def get_special_tokens_mask(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None, already_has_special_tokens: bool = False
    ) -> list[int]:
        if already_has_special_tokens:
            special = set(self.all_special_ids)
            return [1 if t in special else 0 for t in token_ids_0]
        mask = [0] * len(token_ids_0) + [1, 1]
        if token_ids_1 is not None:
            mask += [0] * len(token_ids_1) + [1]
        return mask

    def create_token_type_ids_from_sequences(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        return [0] * len(self.build_inputs_with_special_tokens(token_ids_0, token_ids_1))

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return 3 if pair else 2

    # --- files ------------------------------------------------------------------------------------------
    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        name = (filename_prefix + "-" if filename_prefix else "") + VOCAB_FILE
        out = os.path.join(save_directory, name)
        if os.path.abspath(self.vocab_file) != os.path.abspath(out):
            shutil.copyfile(self.vocab_file, out)
        return (out,)
