"""ChatGLM-6B tokenizer behaviour beyond the reference ids, and the v1 training-example format."""
from __future__ import annotations

from xfed.models.chatglm import ChatGLM6BTokenizer, build_v1_example


def test_whitespace_placeholders_round_trip(v1_loaded):
    _, tok = v1_loaded
    text = "def f():\n\treturn  1   +    2\n"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.convert_tokens_to_ids("<|tab|>") in ids and tok.convert_tokens_to_ids("<|blank_4|>") in ids
    assert tok.decode(ids) == text


def test_batch_padding_is_left_and_decode_drops_padding(v1_loaded):
    _, tok = v1_loaded
    batch = tok(["你好", "写一首诗"], padding=True)
    short, long_ = batch["input_ids"]
    assert short[0] == tok.pad_token_id and short[-2:] == [tok.gmask_token_id, tok.bos_token_id]
    assert batch["attention_mask"][0][0] == 0 and len(short) == len(long_)
    assert tok.decode(short) == "你好"
    assert tok.decode([*short, tok.eos_token_id], skip_special_tokens=True) == "你好"


def test_save_and_reload_keeps_ids(v1_loaded, tmp_path):
    _, tok = v1_loaded
    tok.save_pretrained(tmp_path)
    again = ChatGLM6BTokenizer.from_pretrained(tmp_path)
    assert (tmp_path / "ice_text.model").is_file()
    text = "问：第一行\n  第二行\t！"
    assert again.encode(text) == tok.encode(text) and again.padding_side == "left"


def test_training_example_matches_thudm_ptuning_format(v1_loaded, v1_ref):
    _, tok = v1_loaded
    tl = v1_ref["train_loss"]
    for ids, labels in zip(tl["input_ids"], tl["labels"], strict=True):
        real = [i for i in ids if i != tok.pad_token_id]
        g = real.index(tok.gmask_token_id)
        prompt, answer = tok.decode(real[:g]), tok.decode(real[g + 2:-1])
        got_ids, got_labels = build_v1_example(tok, prompt, answer, 64, 64)
        assert got_ids == real
        assert got_labels == labels[: len(real)]


def test_training_example_truncates_like_thudm(v1_loaded):
    _, tok = v1_loaded
    ids, labels = build_v1_example(tok, "一二三四五六七八九十" * 3, "甲乙丙丁戊己庚辛" * 3, 5, 6)
    gmask = ids.index(tok.gmask_token_id)
    assert gmask == 4 and ids[gmask + 1] == tok.bos_token_id     # max_src - 1 prompt tokens
    assert len(ids) - gmask - 3 == 4 and ids[-1] == tok.eos_token_id  # max_dst - 2 answer tokens
    assert labels[: gmask + 1] == [-100] * (gmask + 1) and labels[gmask + 1:] == ids[gmask + 1:]
