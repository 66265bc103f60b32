"""Training examples follow each family's THUDM fine-tuning format, or the stage's prompt_pattern."""
from __future__ import annotations

from pathlib import Path

import pytest

from xfed.errors import ConfigError
from xfed.models.chatglm3.tokenization import ChatGLM3Tokenizer
from xfed.models.formats import IGNORE_INDEX, build_example, build_prompt_ids, encode_example, format_prompt

SP = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "chatglm" / "base" / "chatglm3-6b" / \
    "tokenizer.model"


@pytest.fixture(scope="module")
def tok3():
    return ChatGLM3Tokenizer(str(SP))


def supervised(example):
    return [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX]


def test_xfl_prompt_pattern_is_positional_instruction_then_input():
    assert format_prompt("{}：\n问：{}\n答：", "写诗", "公携人") == "写诗：\n问：公携人\n答："
    assert format_prompt("{instruction}|{input}", "a", "b") == "a|b"
    with pytest.raises(ConfigError, match="prompt_pattern"):
        format_prompt("{who}", "a", "b")


def test_chatglm3_uses_role_tokens_and_learns_the_answer_and_eos(tok3):
    ex = encode_example("chatglm3", tok3, "你好", "你好！", instruction="要礼貌")
    assert ex.input_ids[:3] == [64790, 64792, tok3.get_command("<|system|>")]
    assert ex.input_ids == tok3.build_chat_input("你好", [{"role": "system", "content": "要礼貌"}])[
        "input_ids"][0].tolist() + tok3.encode_plain("\n") + tok3.encode_plain("你好！") + [tok3.eos_token_id]
    # loss starts after <|assistant|> and covers the answer and eos (THUDM finetune_demo)
    assert supervised(ex) == tok3.encode_plain("\n") + tok3.encode_plain("你好！") + [tok3.eos_token_id]


def test_chatglm2_uses_numbered_rounds(tok3):
    ex = encode_example("chatglm2", tok3, "再见", "拜拜", history=[("你好", "你好！")])
    prompt = "[Round 1]\n\n问：你好\n\n答：你好！\n\n[Round 2]\n\n问：再见\n\n答："
    assert ex.input_ids == tok3.encode(prompt) + tok3.encode("拜拜", add_special_tokens=False) + [2]
    assert supervised(ex) == tok3.encode("拜拜", add_special_tokens=False) + [2]


def test_prompt_pattern_overrides_the_family_template_and_truncates(tok3):
    ex = encode_example("chatglm3", tok3, "公携人地水风日长", "公子申敬爱", instruction="写藏头诗",
                       prompt_pattern="{}：\n问：{}\n答：", max_source_length=6, max_target_length=2)
    assert ex.input_ids[:6] == tok3.encode("写藏头诗：\n问：公携人地水风日长\n答：")[:6]
    assert len(ex.input_ids) == 6 + 2 + 1 and ex.labels[:6] == [IGNORE_INDEX] * 6


def test_native_tokenizer_without_chat_template_uses_plain_text(native_folders):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(native_folders["gpt2"])
    ex = encode_example("auto", tok, "the cat", "sat on a mat")
    assert tok.decode(ex.input_ids) .split() == "the cat sat on a mat </s>".split()
    assert tok.decode(supervised(ex)).split() == "sat on a mat </s>".split()


@pytest.fixture(scope="module")
def data_example():
    data = pytest.importorskip("xfed.operators.horizontal_chatglm.data")
    return data.Example


def test_operator_examples_chatglm3_raw_query_and_history_become_turns(tok3, data_example):
    ex = data_example(prompt="再见", answer="拜拜", history=(("你好", "你好！"),), query="再见")
    ids, labels = build_example("chatglm3", tok3, ex, max_src_length=64, max_dst_length=8)
    prompt = build_prompt_ids("chatglm3", tok3, ex, max_src_length=64)
    history = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]
    assert prompt == tok3.build_chat_input("再见", history)["input_ids"][0].tolist()
    assert ids[: len(prompt)] == prompt and labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert ids[len(prompt):] == tok3.encode_plain("\n") + tok3.encode_plain("拜拜") + [2]


def test_operator_examples_pattern_rendered_prompt_and_truncation(tok3, data_example):
    ex = data_example(prompt="写诗：\n问：公携人\n答：", answer="公子申敬爱携朋玩物华", query="公携人")
    ids, labels = build_example("chatglm2", tok3, ex, max_src_length=5, max_dst_length=3)
    assert ids[:5] == tok3.encode(ex.prompt)[:5] and len(ids) == 5 + 3
    assert labels[-1] == tok3.eos_token_id and labels[:5] == [IGNORE_INDEX] * 5
    assert build_prompt_ids("chatglm2", tok3, ex, max_src_length=5) == ids[:5]
    raw = data_example(prompt="你好", answer="嗯", query="你好")
    assert build_prompt_ids("chatglm2", tok3, raw) == tok3.encode("[Round 1]\n\n问：你好\n\n答：")


def test_operator_examples_chatglm6b_go_through_build_v1_example(data_example):
    v1 = pytest.importorskip("xfed.models.chatglm")
    base = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "chatglm" / "base" / "chatglm-6b"
    tok = v1.load_v1_tokenizer(base)
    ex = data_example(prompt="写诗：\n问：公携人\n答：", answer="公子", query="公携人")
    ids, labels = build_example("chatglm", tok, ex, max_src_length=32, max_dst_length=8)
    assert (ids, labels) == tuple(v1.build_v1_example(tok, ex.prompt, ex.answer, 32, 8))
    prompt = build_prompt_ids("chatglm", tok, ex, max_src_length=32)
    assert prompt == ids[: len(prompt)] and prompt[-1] == tok.bos_token_id
