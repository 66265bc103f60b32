"""Training examples in each family's THUDM fine-tuning format (or a stage's prompt_pattern).

Two entry points: `build_example` / `build_prompt_ids` take the operator's data Example (rendered
`prompt`, raw `query` and `history`, `answer`); `encode_example` takes the parts directly.

- ChatGLM-6B: prompt ids + [gMASK] <sop> + answer + <eop> (delegated to xfed.models.chatglm).
- ChatGLM2-6B: THUDM's `[Round N]\\n\\n问：…\\n\\n答：` prompt (ptuning/main.py), answer, eos.
- ChatGLM3-6B: role tokens (finetune_demo): [gMASK] sop <|system|>… <|user|>… <|assistant|>…
  eos; loss on assistant turns, shifted by one so the model learns to emit the next role token.
- Other models: their chat template when the tokenizer has one, else the plain text.
With a `prompt_pattern` (XFL's "{}：\\n问：{}\\n答：", positional instruction then input, or named
{instruction}/{input}) the prompt is that text, encoded with the tokenizer's special tokens.
"""
from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from xfed.errors import ConfigError

IGNORE_INDEX = -100


@dataclass
class Encoded:
    """One supervised sequence: labels are IGNORE_INDEX where no loss is taken."""

    input_ids: list[int]
    labels: list[int]
    attention_mask: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.attention_mask:
            self.attention_mask = [1] * len(self.input_ids)

    def as_dict(self) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids, "labels": self.labels, "attention_mask": self.attention_mask}


def format_prompt(pattern: str, instruction: str, query: str) -> str:
    """Fill XFL's prompt_pattern: positional '{}' (instruction, input) or named {instruction}/{input}."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as err:
        raise ConfigError(f"prompt_pattern {pattern!r}: {err}") from None
    named = {f for f in fields if f}
    if named - {"instruction", "input", "query"}:
        raise ConfigError(f"prompt_pattern {pattern!r}: unknown field(s) {sorted(named)}; use {{}} or "
                          "{instruction} / {input}")
    if named:
        return pattern.format(instruction=instruction, input=query, query=query)
    if len(fields) == 1:
        return pattern.format(query)
    if len(fields) == 2:
        return pattern.format(instruction, query)
    if not fields:
        return pattern + query
    raise ConfigError(f"prompt_pattern {pattern!r}: expected one or two '{{}}' fields, found {len(fields)}")


def _encode(tokenizer: Any, text: str, *, special: bool, max_length: int | None) -> list[int]:
    ids = tokenizer.encode(text, add_special_tokens=special)
    if max_length is not None and len(ids) > max_length:
        ids = ids[:max_length]
    return list(ids)


def _eos(tokenizer: Any) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def chatglm2_prompt(query: str, history: Sequence[tuple[str, str]] = ()) -> str:
    """THUDM ChatGLM2 `build_prompt`: numbered rounds."""
    text = ""
    for i, (old_query, response) in enumerate(history):
        text += f"[Round {i + 1}]\n\n问：{old_query}\n\n答：{response}\n\n"
    return text + f"[Round {len(history) + 1}]\n\n问：{query}\n\n答："


def _history_pairs(history: Sequence[Any] | None) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for item in history or ():
        if isinstance(item, dict):
            pairs.append((str(item.get("prompt", item.get("input", ""))), str(item.get("response", item.get("output", "")))))
        else:
            q, a = item
            pairs.append((str(q), str(a)))
    return pairs


def _prompt_answer(tokenizer: Any, prompt: str, answer: str, *, max_source_length: int | None,
                   max_target_length: int | None) -> Encoded:
    a_ids = _encode(tokenizer, prompt, special=True, max_length=max_source_length)
    b_ids = _encode(tokenizer, answer, special=False, max_length=max_target_length)
    eos = _eos(tokenizer)
    return Encoded(a_ids + b_ids + eos, [IGNORE_INDEX] * len(a_ids) + b_ids + eos)


def chatglm3_conversation(tokenizer: Any, messages: Sequence[dict[str, str]], *,
                          max_length: int | None = None) -> Encoded:
    """THUDM ChatGLM3 finetune_demo `process_batch` for one conversation."""
    ids = tokenizer.get_prefix_tokens()
    loss = [False] * len(ids)
    for message in messages:
        role = message["role"]
        piece = tokenizer.build_single_message(role, message.get("metadata", ""), message["content"])
        ids += piece
        loss += [role == "assistant"] * len(piece)
    ids.append(tokenizer.eos_token_id)
    loss = [False, *loss]  # label i is kept when token i-1 belongs to an assistant turn
    labels = [t if keep else IGNORE_INDEX for t, keep in zip(ids, loss, strict=False)]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return Encoded(ids, labels)


def encode_example(family: str, tokenizer: Any, query: str, answer: str, *, instruction: str = "",
                  history: Sequence[Any] | None = None, prompt_pattern: str | None = None,
                  max_source_length: int | None = None, max_target_length: int | None = None) -> Encoded:
    """One training example for `family` ('chatglm', 'chatglm2', 'chatglm3', 'auto')."""
    pairs = _history_pairs(history)
    if prompt_pattern is not None:
        prompt = format_prompt(prompt_pattern, instruction, query)
        if family == "chatglm":
            return _v1_example(tokenizer, prompt, answer, max_source_length, max_target_length)
        return _prompt_answer(tokenizer, prompt, answer, max_source_length=max_source_length,
                              max_target_length=max_target_length)
    if family == "chatglm":
        prompt = (instruction + "\n" if instruction else "") + query
        if pairs:
            prompt = "".join(f"[Round {i}]\n问：{q}\n答：{a}\n" for i, (q, a) in enumerate(pairs)) + \
                f"[Round {len(pairs)}]\n问：{prompt}\n答："
        return _v1_example(tokenizer, prompt, answer, max_source_length, max_target_length)
    if family == "chatglm2":
        prompt = chatglm2_prompt((instruction + "\n" if instruction else "") + query, pairs)
        return _prompt_answer(tokenizer, prompt, answer, max_source_length=max_source_length,
                              max_target_length=max_target_length)
    if family == "chatglm3":
        messages = [{"role": "system", "content": instruction}] if instruction else []
        for q, a in pairs:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages += [{"role": "user", "content": query}, {"role": "assistant", "content": answer}]
        total = None if max_source_length is None or max_target_length is None \
            else max_source_length + max_target_length + 1
        return chatglm3_conversation(tokenizer, messages, max_length=total)
    return _native_example(tokenizer, query, answer, instruction=instruction, pairs=pairs,
                           max_source_length=max_source_length, max_target_length=max_target_length)


def _native_example(tokenizer: Any, query: str, answer: str, *, instruction: str, pairs: list[tuple[str, str]],
                    max_source_length: int | None, max_target_length: int | None) -> Encoded:
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": instruction}] if instruction else []
        for q, a in pairs:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": query})
        a_ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                   return_dict=False))
        if max_source_length is not None:
            a_ids = a_ids[-max_source_length:]  # keep the turn being answered
        b_ids = _encode(tokenizer, answer, special=False, max_length=max_target_length)
        eos = _eos(tokenizer)
        return Encoded(a_ids + b_ids + eos, [IGNORE_INDEX] * len(a_ids) + b_ids + eos)
    context = "".join(f"{q}\n{a}\n" for q, a in pairs)
    prompt = context + (instruction + "\n" if instruction else "") + query
    return _prompt_answer(tokenizer, prompt, answer, max_source_length=max_source_length,
                          max_target_length=max_target_length)


def _v1_example(tokenizer: Any, prompt: str, answer: str, max_source_length: int | None,
                max_target_length: int | None) -> Encoded:
    from xfed.models.chatglm import build_v1_example  # lazily: importing it registers the v1 family

    input_ids, labels = build_v1_example(tokenizer, prompt, answer, max_source_length=max_source_length,
                                         max_target_length=max_target_length)
    return Encoded(list(input_ids), list(labels))


# --- the operator's data Example (xfed.operators.horizontal_chatglm.data.Example) -----------------
def _is_raw(example: Any) -> bool:
    """True when no prompt_pattern rendered the prompt (it is the raw query) or the example has history."""
    query = getattr(example, "query", "") or ""
    return bool(query) and (bool(getattr(example, "history", ())) or example.prompt == query)


def _messages(example: Any) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    if _is_raw(example):
        for q, a in _history_pairs(getattr(example, "history", ())):
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": example.query})
    else:
        messages.append({"role": "user", "content": example.prompt})
    return messages


def _chatglm3_prompt(tokenizer: Any, example: Any, max_src_length: int | None) -> list[int]:
    ids: list[int] = []
    for m in _messages(example):
        ids += tokenizer.build_single_message(m["role"], "", m["content"])
    ids.append(tokenizer.get_command("<|assistant|>"))
    prefix = tokenizer.get_prefix_tokens()
    if max_src_length is not None and len(prefix) + len(ids) > max_src_length:
        ids = ids[-max(max_src_length - len(prefix), 1):]  # keep the turn being answered, drop old history
    return prefix + ids


def _chatglm2_prompt_text(example: Any) -> str:
    if _is_raw(example):
        return chatglm2_prompt(example.query, _history_pairs(getattr(example, "history", ())))
    return example.prompt


def build_prompt_ids(family: str, tokenizer: Any, example: Any, *, max_src_length: int | None = None) -> list[int]:
    """Prompt ids to generate the answer from, truncated exactly as build_example truncates them."""
    if family == "chatglm":
        ids = _v1_example(tokenizer, example.prompt, "", max_src_length, None).input_ids
        sop = tokenizer.bos_token_id
        return ids[: ids.index(sop) + 1] if sop in ids else ids
    if family == "chatglm2":
        return _encode(tokenizer, _chatglm2_prompt_text(example), special=True, max_length=max_src_length)
    if family == "chatglm3":
        return _chatglm3_prompt(tokenizer, example, max_src_length)
    return _encode(tokenizer, example.prompt, special=True, max_length=max_src_length)


def build_example(family: str, tokenizer: Any, example: Any, *, max_src_length: int | None = None,
                  max_dst_length: int | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for the operator's Example in `family`'s THUDM fine-tuning format.

    ChatGLM-6B: rendered prompt, [gMASK] <sop>, answer, <eop> (THUDM p-tuning). ChatGLM2: THUDM's
    [Round N] template around the raw query and history, or the pattern-rendered prompt as is.
    ChatGLM3: role tokens; the raw query and history as turns, or the rendered prompt as one user
    turn; loss on the answer and eos. max_dst_length counts the answer with its eos.
    """
    if family == "chatglm":
        enc = _v1_example(tokenizer, example.prompt, example.answer, max_src_length, max_dst_length)
        return enc.input_ids, enc.labels
    answer_cap = None if max_dst_length is None else max(max_dst_length - 1, 0)
    if family == "chatglm3":
        prompt = _chatglm3_prompt(tokenizer, example, max_src_length)
        answer = tokenizer.encode_plain("\n") + tokenizer.encode_plain(example.answer)
        answer = answer[:answer_cap] if answer_cap is not None else answer
        eos = [tokenizer.eos_token_id]
        return prompt + answer + eos, [IGNORE_INDEX] * len(prompt) + answer + eos
    text = _chatglm2_prompt_text(example) if family == "chatglm2" else example.prompt
    enc = _prompt_answer(tokenizer, text, example.answer, max_source_length=max_src_length,
                         max_target_length=answer_cap)
    return enc.input_ids, enc.labels
