"""ChatGLM2/3 tokenizer from tokenizer.model gives THUDM's ids, chat inputs and survives save/reload."""
from __future__ import annotations

from pathlib import Path

import pytest

from xfed.models.chatglm3.tokenization import ChatGLM3Tokenizer

BASE = Path(__file__).resolve().parents[3].parent / "shared" / "fixtures" / "chatglm" / "base"
SP_MODEL = BASE / "chatglm3-6b" / "tokenizer.model"


@pytest.fixture(scope="module")
def tok():
    return ChatGLM3Tokenizer(str(SP_MODEL))


def test_encode_and_decode_match_thudm_for_every_reference_text(tok, v3_ref):
    for case in v3_ref["tokenize"]:
        ids = tok.encode(case["text"])
        assert ids == case["ids"], case["text"]
        assert tok.decode(ids) == case["decoded"]


def test_build_chat_input_matches_thudm(tok, v3_ref):
    for case in v3_ref["chat_input"]:
        ids = tok.build_chat_input(case["query"], case["history"])["input_ids"][0].tolist()
        assert ids == case["ids"]


def test_command_and_role_token_ids_are_thudms(tok):
    assert [tok.get_command(t) for t in ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")] == list(range(64789, 64794))
    assert tok.get_command("<|user|>") == 64795 and tok.get_command("<|observation|>") == 64797
    assert tok.pad_token_id == 0 and tok.eos_token_id == 2 and len(tok) == 64798


def test_role_tokens_in_user_text_stay_text(tok):
    assert 64795 not in tok.encode("<|user|> hi")


def test_chatglm2_variant_has_no_role_tokens(tok):
    tok2 = ChatGLM3Tokenizer(str(SP_MODEL), variant="chatglm2")
    assert tok2.encode("你好") == tok.encode("你好")
    assert len(tok2) == 64794
    with pytest.raises(KeyError):
        tok2.get_command("<|user|>")


def test_batches_pad_on_the_left_by_default(tok):
    batch = tok(["你好", "Hello world, hello again"], padding=True)
    assert batch["input_ids"][0][0] == tok.pad_token_id and batch["attention_mask"][0][0] == 0


def test_save_pretrained_then_autotokenizer_reloads_the_same_ids(tok, tmp_path, v3_ref):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.model").is_file()
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert type(again) is ChatGLM3Tokenizer and again.variant == "chatglm3"
    for case in v3_ref["tokenize"]:
        assert again.encode(case["text"]) == case["ids"]


def test_saved_tokenizer_json_gives_thudm_ids_without_xfed(tok, tmp_path, v3_ref):
    import json
    import random

    from tokenizers import Tokenizer

    tok.save_pretrained(tmp_path)
    fast = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))  # what plain AutoTokenizer loads
    texts = [case["text"] for case in v3_ref["tokenize"]]
    poetry = BASE.parents[2] / "xfl_compat" / "dataset" / "poetry_small" / "hhpoetry-1.json"
    if poetry.is_file():
        data = json.loads(poetry.read_text(encoding="utf-8"))
        texts += [i["input"] + i["output"] for i in data["instances"]][:50]
    rng = random.Random(0)
    alphabet = "ab XY 12 90 \t\n  你好世界，。！？🙂üé€\r"
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24))) for _ in range(400)]
    texts += ["<|user|> [gMASK] sop"]
    for text in texts:
        assert fast.encode(text).ids == tok.encode(text), repr(text)
    for case in v3_ref["tokenize"]:
        assert fast.decode(case["ids"], skip_special_tokens=False) == case["decoded"]
