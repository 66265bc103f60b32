"""ChatGLM2/3 tokenizer from THUDM's tokenizer.model: THUDM's ids, as a transformers tokenizer.

SentencePiece gives the ordinary pieces; THUDM appends its command tokens after the
SentencePiece vocabulary ([MASK] [gMASK] [sMASK] sop eop, and for ChatGLM3 the role tokens
<|system|> <|user|> <|assistant|> <|observation|>). Every encoded text starts with
`[gMASK] sop`. Role tokens inside plain text stay text (THUDM's default), so user data cannot
inject a turn boundary.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

from sentencepiece import SentencePieceProcessor
from transformers import PreTrainedTokenizer

COMMAND_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
ROLES = ("system", "user", "assistant", "observation")
VOCAB_FILE = "tokenizer.model"


class ChatGLM3Tokenizer(PreTrainedTokenizer):
    """THUDM's ChatGLM2/ChatGLM3 tokenizer (`variant` 'chatglm2' has no role tokens)."""

    vocab_files_names = {"vocab_file": VOCAB_FILE}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str, variant: str = "chatglm3", padding_side: str = "left",
                 clean_up_tokenization_spaces: bool = False, **kwargs: Any):
        if variant not in ("chatglm2", "chatglm3"):
            raise ValueError(f"variant must be chatglm2 or chatglm3, not {variant!r}")
        self.vocab_file = vocab_file
        self.variant = variant
        self.sp_model = SentencePieceProcessor(model_file=vocab_file)
        self.n_sp = self.sp_model.vocab_size()
        names = COMMAND_TOKENS + (ROLE_TOKENS if variant == "chatglm3" else ())
        self.command_ids = {tok: self.n_sp + i for i, tok in enumerate(names)}
        self.command_tokens = {i: tok for tok, i in self.command_ids.items()}
        for key in ("unk_token", "pad_token", "eos_token"):
            kwargs.pop(key, None)
        super().__init__(
            unk_token="<unk>", pad_token="<unk>", eos_token="</s>", variant=variant,
            padding_side=padding_side, clean_up_tokenization_spaces=clean_up_tokenization_spaces, **kwargs,
        )

    # --- vocabulary -----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.n_sp + len(self.command_ids)

    def get_vocab(self) -> dict[str, int]:
        if getattr(self, "_sp_vocab", None) is None:
            # one batched call: transformers asks for the vocabulary several times while initialising
            pieces = self.sp_model.id_to_piece(list(range(self.n_sp)))
            self._sp_vocab = dict(zip(pieces, range(self.n_sp), strict=True))
        vocab = dict(self._sp_vocab)
        vocab.update(self.command_ids)
        vocab.update(self._added_tokens_encoder)
        return vocab

    def get_command(self, token: str) -> int:
        """Id of a THUDM command/role token such as '[gMASK]', 'sop', '<|user|>'."""
        if token in self.command_ids:
            return self.command_ids[token]
        raise KeyError(f"{token!r} is not a command token of the {self.variant} tokenizer")

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        return self.sp_model.encode_as_pieces(text)

    def _convert_token_to_id(self, token: str) -> int:
        if token in self.command_ids:
            return self.command_ids[token]
        return self.sp_model.piece_to_id(token)

    def _convert_id_to_token(self, index: int) -> str:
        if index in self.command_tokens:
            return self.command_tokens[index]
        # THUDM renders <s>, </s>, <unk> and out-of-range ids as nothing.
        if index in (self.sp_model.bos_id(), self.sp_model.eos_id(), self.sp_model.unk_id()) \
                or index < 0 or index >= self.n_sp:
            return ""
        return self.sp_model.id_to_piece(index)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self.sp_model.decode_pieces(tokens)

    # --- special tokens -------------------------------------------------------------------------
    def get_prefix_tokens(self) -> list[int]:
        return [self.command_ids["[gMASK]"], self.command_ids["sop"]]

    def build_inputs_with_special_tokens(self, token_ids_0: list[int],
                                         token_ids_1: list[int] | None = None) -> list[int]:
        ids = self.get_prefix_tokens() + list(token_ids_0)
        if token_ids_1 is not None:
            ids = ids + list(token_ids_1) + [self.eos_token_id]
        return ids

    def get_special_tokens_mask(self, token_ids_0: list[int], token_ids_1: list[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:
        if already_has_special_tokens:
            special = set(self.command_ids.values()) | {self.eos_token_id}
            return [1 if t in special else 0 for t in token_ids_0]
        mask = [1, 1] + [0] * len(token_ids_0)
        if token_ids_1 is not None:
            mask += [0] * len(token_ids_1) + [1]
        return mask

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return 3 if pair else 2

    def create_token_type_ids_from_sequences(self, token_ids_0: list[int],
                                             token_ids_1: list[int] | None = None) -> list[int]:
        return [0] * len(self.build_inputs_with_special_tokens(token_ids_0, token_ids_1))

    # --- chat -----------------------------------------------------------------------------------
    def encode_plain(self, text: str) -> list[int]:
        """SentencePiece ids of `text` without any prefix (THUDM's `tokenizer.tokenizer.encode`)."""
        return list(self.sp_model.encode(text))

    def build_single_message(self, role: str, metadata: str, message: str) -> list[int]:
        if self.variant != "chatglm3":
            raise ValueError("role tokens exist only in the ChatGLM3 tokenizer")
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        return [self.command_ids[f"<|{role}|>"]] + self.encode_plain(f"{metadata}\n") + self.encode_plain(message)

    def build_chat_input(self, query: str, history: list[dict] | None = None, role: str = "user",
                         return_tensors: str | None = "pt"):
        """THUDM's ChatGLM3 prompt: [gMASK]sop, each turn as <|role|> meta\\n content, then <|assistant|>."""
        ids: list[int] = []
        for item in history or []:
            content = item["content"]
            if item["role"] == "system" and "tools" in item:
                content = content + "\n" + json.dumps(item["tools"], indent=4, ensure_ascii=False)
            ids.extend(self.build_single_message(item["role"], item.get("metadata", ""), content))
        ids.extend(self.build_single_message(role, "", query))
        ids.append(self.command_ids["<|assistant|>"])
        return self.prepare_for_model(ids, add_special_tokens=True, return_tensors=return_tensors,
                                      prepend_batch_axis=return_tensors is not None)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        """tokenizer.model, plus an equivalent tokenizer.json for environments without xfed."""
        prefix = filename_prefix + "-" if filename_prefix else ""
        out = os.path.join(save_directory, prefix + VOCAB_FILE) if os.path.isdir(save_directory) else save_directory
        if os.path.abspath(self.vocab_file) != os.path.abspath(out):
            shutil.copyfile(self.vocab_file, out)
        if not os.path.isdir(save_directory):
            return (out,)
        from xfed.models.chatglm3.fast import build_fast_tokenizer

        fast = os.path.join(save_directory, prefix + "tokenizer.json")
        build_fast_tokenizer(self.vocab_file, self.command_ids, self.eos_token_id).save(fast)
        return (out, fast)


def register_with_auto() -> None:
    """Let AutoTokenizer resolve the class name a saved copy's tokenizer_config.json carries."""
    from transformers.models.auto import tokenization_auto

    tokenization_auto.REGISTERED_TOKENIZER_CLASSES.setdefault(ChatGLM3Tokenizer.__name__, ChatGLM3Tokenizer)


register_with_auto()
