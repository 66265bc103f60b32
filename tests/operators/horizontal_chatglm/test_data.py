"""Data readers (XFL QA, JSON/JSONL, history rounds), features (masking, truncation, eos) and the collator."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from xfed.errors import ConfigError
from xfed.operators.horizontal_chatglm import collate, data

SHARED = Path(__file__).resolve().parents[3].parent / "shared"
POETRY = SHARED / "xfl_compat" / "dataset" / "poetry_small"
XFL_PATTERN = "{}：\n问：{}\n答："


@pytest.fixture(scope="module")
def char_tokenizer():
    """A character tokenizer like the tiny model's: <bos> prepended, unknown characters -> <unk>."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3}
    for ch in "abcdefghijklmnopqrstuvwxyz \n：问答[]0123456789Rund":
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<bos>", eos_token="<eos>")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ readers
def test_xfl_poetry_folder_is_read_in_sorted_file_order_with_the_prompt_pattern():
    examples = data.read_records([{"type": "QA", "path": str(POETRY)}], {"prompt_pattern": XFL_PATTERN})
    files = sorted(POETRY.glob("*.json"))
    docs = [json.loads(f.read_text(encoding="utf-8")) for f in files]
    assert len(examples) == sum(len(d["instances"]) for d in docs)
    first, last = docs[0], docs[-1]
    assert examples[0].prompt == XFL_PATTERN.format(first["instruction"], first["instances"][0]["input"])
    assert examples[0].answer == first["instances"][0]["output"]
    assert examples[-1].answer == last["instances"][-1]["output"]
    assert examples[0].source.endswith(f"{files[0].name}#instances[0]")


def test_qa_file_with_one_slot_pattern_and_custom_keys(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps({"instruction": "ignored", "instances": [{"q": "ab", "a": "ba"}]}))
    [ex] = data.read_records(path, {"prompt_pattern": "Q: {}\nA:", "key_query": "q", "key_answer": "a"})
    assert (ex.prompt, ex.answer, ex.query) == ("Q: ab\nA:", "ba", "ab")


def test_named_prompt_pattern_fields(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps({"instruction": "do", "instances": [{"input": "x", "output": "y"}]}))
    [ex] = data.read_records(path, {"prompt_pattern": "<{query}|{instruction}>"})
    assert ex.prompt == "<x|do>"


def test_jsonl_prompt_and_response_columns(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p1", "response": "r1"}, {"prompt": "p2", "response": "r2"}])
    examples = data.read_records(path, {"prompt_column": "prompt", "response_column": "response"})
    assert [(e.prompt, e.answer) for e in examples] == [("p1", "r1"), ("p2", "r2")]
    assert examples[1].source.endswith("d.jsonl: line 2")


def test_advertisegen_json_lines_in_a_json_file_with_content_summary(tmp_path):
    path = write_jsonl(tmp_path / "train.json", [{"content": "类型#裤", "summary": "好看"}, {"content": "c", "summary": "s"}])
    examples = data.read_records(path, {"prompt_column": "content", "response_column": "summary"})
    assert [(e.prompt, e.answer) for e in examples] == [("类型#裤", "好看"), ("c", "s")]
    # without configured columns the known content/summary pair is found by itself
    assert data.read_records(path, {}) == examples


def test_json_array_of_records(tmp_path):
    path = tmp_path / "arr.json"
    path.write_text(json.dumps([{"prompt": "a", "response": "b"}]))
    [ex] = data.read_records(path, {})
    assert (ex.prompt, ex.answer, ex.source.endswith("arr.json: [0]")) == ("a", "b", True)


def test_history_is_rendered_as_chatglm_rounds(tmp_path):
    rows = [{"prompt": "q3", "response": "a3", "history": [["q1", "a1"], ["q2", "a2"]]},
            {"prompt": "solo", "response": "x", "history": []}]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    examples = data.read_records(path, {"history_column": "history"})
    assert examples[0].prompt == "[Round 0]\n问：q1\n答：a1\n[Round 1]\n问：q2\n答：a2\n[Round 2]\n问：q3\n答："
    assert examples[0].history == (("q1", "a1"), ("q2", "a2"))
    assert examples[0].query == "q3"
    assert examples[1].prompt == "[Round 0]\n问：solo\n答："


def test_history_template_positional_and_one_based(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": "q2", "response": "a2", "history": [["q1", "a1"]]}])
    [ex] = data.read_records(path, {"history_column": "history", "history_template": "<{}>{}={}|"})
    assert ex.prompt == "<0>q1=a1|<1>q2="
    [ex] = data.read_records(path, {"history_column": "history",
                                    "history_template": "[Round {round}]\n\n问：{query}\n\n答：{answer}\n\n"})
    assert ex.prompt == "[Round 1]\n\n问：q1\n\n答：a1\n\n[Round 2]\n\n问：q2\n\n答："
    [ex] = data.read_records(path, {"history_column": "history", "history_template": "{}:{}\n"})
    assert ex.prompt == "q1:a1\nq2:"


def test_jsonl_line_separator_inside_a_string_is_not_a_line_break(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_text('{"prompt": "a\u2028b", "response": "c"}\r\n{"prompt": "d", "response": "e"}\n', encoding="utf-8")
    examples = data.read_records(path, {})
    assert [(e.prompt, e.answer) for e in examples] == [("a\u2028b", "c"), ("d", "e")]
    assert examples[1].source.endswith("line 2")


def test_several_entries_concatenate_in_order(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "1", "response": "x"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "2", "response": "y"}])
    examples = data.read_records([str(b), {"path": str(a)}], {})
    assert [e.prompt for e in examples] == ["2", "1"]


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("rows, params, expected", [
    ([{"prompt": "a", "response": "b"}, {"prompt": "a", "response": "b"}, "{not json"], {}, "bad.jsonl: line 3: invalid JSON"),
    ([{"prompt": "a", "response": "b"}, {"prompt": "a"}], {"prompt_column": "prompt", "response_column": "response"},
     "bad.jsonl: line 2: missing key 'response'"),
    ([{"prompt": "a", "response": 7}], {}, "bad.jsonl: line 1: response: expected a string, got int"),
    (["[1, 2]"], {}, "bad.jsonl: line 1: expected a JSON object, got list"),
    ([{"prompt": "a", "response": "b", "h": "oops"}], {"history_column": "h"},
     "bad.jsonl: line 1: h: expected a list of [query, answer] pairs"),
    ([{"prompt": "a", "response": "b", "h": [["q"]]}], {"history_column": "h"},
     "bad.jsonl: line 1: h[0]: expected a [query, answer] pair"),
])
def test_bad_jsonl_record_names_file_and_line(tmp_path, rows, params, expected):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ConfigError) as err:
        data.read_records(path, params)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_blank_lines_do_not_shift_line_numbers(tmp_path):
    path = tmp_path / "gap.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "a"}\n')
    with pytest.raises(ConfigError, match=r"gap.jsonl: line 3: missing key"):
        data.read_records(path, {})


@pytest.mark.parametrize("doc, expected", [
    ({"instruction": "i", "instances": [{"input": "a", "output": "b"}, {"input": "a"}]},
     "qa.json: instances[1]: missing key 'output'"),
    ({"instruction": "i", "instances": [{"input": "a", "output": "b"}, "x"]}, "qa.json: instances[1]: expected an object"),
    ({"instruction": "i", "instances": {"input": "a"}}, "qa.json: instances: expected a list"),
    ({"instruction": 3, "instances": []}, "qa.json: instruction: expected a string"),
])
def test_bad_qa_instance_names_file_and_index(tmp_path, doc, expected):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as err:
        data.read_records([{"type": "QA", "path": str(path)}], {})
    assert expected in str(err.value)


def test_invalid_json_file_reports_line_and_column(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text('{"instruction": "i",\n "instances": [}\n')
    with pytest.raises(ConfigError, match=r"qa.json: line 2 column \d+: invalid JSON"):
        data.read_records(path, {})


def test_missing_path_and_empty_folder_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="nope.json: data file or folder not found"):
        data.read_records(str(tmp_path / "nope.json"), {})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no .json or .jsonl data files"):
        data.read_records(str(tmp_path / "empty"), {})


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_any_file_content_gives_examples_or_one_line_config_error(tmp_path, suffix):
    """Fuzz: whatever a data file holds, the reader returns Examples or raises a one-line ConfigError."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    records = st.dictionaries(st.sampled_from(["prompt", "response", "history", "content", "x"]),
                              st.none() | st.integers() | st.text(max_size=5)
                              | st.lists(st.lists(st.text(max_size=3), max_size=3), max_size=2), max_size=4)
    lines = st.lists(records.map(lambda r: json.dumps(r)) | st.text(max_size=20), max_size=4)
    contents = st.binary(max_size=40) | lines.map(lambda ls: "\n".join(ls).encode()) | st.just(b"[" * 100_000)
    path = tmp_path / f"fuzz{suffix}"

    @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(contents, st.sampled_from([{}, {"history_column": "history"}]))
    def check(content, params):
        path.write_bytes(content)
        try:
            examples = data.read_records(path, params)
        except ConfigError as err:
            assert "\n" not in str(err) and str(path) in str(err)
        else:
            assert all(isinstance(e.prompt, str) and isinstance(e.answer, str) for e in examples)

    check()


@pytest.mark.parametrize("params, expected", [
    ({"prompt_pattern": "{} {} {}"}, "dataset.prompt_pattern: needs 1 or 2"),
    ({"prompt_pattern": "{oops}"}, "dataset.prompt_pattern: unknown field(s) oops"),
    ({"prompt_pattern": "{"}, "dataset.prompt_pattern: not a valid pattern"),
    ({"prompt_pattern": "{} {query}"}, "dataset.prompt_pattern: mixes {} slots and named fields"),
    ({"history_template": "{}"}, "dataset.history_template: needs 2 or 3"),
    ({"max_src_length": 0}, "dataset.max_src_length: Input should be greater than or equal to 1"),
])
def test_bad_dataset_options(params, expected):
    with pytest.raises(ConfigError) as err:
        data.dataset_settings(params)
    assert expected in str(err.value)


# ------------------------------------------------------------------------------------------ features
def test_features_mask_the_prompt_and_append_eos(char_tokenizer):
    ex = data.Example(prompt="ab：", answer="cd")
    [f] = data.build_features([ex], char_tokenizer, {}, family="auto")
    tok = char_tokenizer
    prompt_ids = [tok.bos_token_id] + tok.convert_tokens_to_ids(list("ab："))
    answer_ids = tok.convert_tokens_to_ids(list("cd")) + [tok.eos_token_id]
    assert f["input_ids"] == prompt_ids + answer_ids
    assert f["labels"] == [-100] * len(prompt_ids) + answer_ids


def test_features_truncate_prompt_and_answer(char_tokenizer, caplog):
    ex = data.Example(prompt="abcdefgh", answer="ijklmnop")
    short = data.Example(prompt="a", answer="b")
    with caplog.at_level("WARNING", logger=data.__name__):
        [f, _] = data.build_features([ex, short], char_tokenizer, {"max_src_length": 4, "max_dst_length": 3})
    assert "1 of 2 prompts longer than max_src_length=4 and 1 answers longer than max_dst_length=3" in caplog.text
    tok = char_tokenizer
    assert f["input_ids"] == [tok.bos_token_id] + tok.convert_tokens_to_ids(list("abc")) + \
        tok.convert_tokens_to_ids(list("ij")) + [tok.eos_token_id]
    assert f["labels"][:4] == [-100] * 4 and f["labels"][-1] == tok.eos_token_id
    assert len(f["input_ids"]) == 4 + 3


def test_build_prompts_match_feature_prompts(char_tokenizer):
    examples = [data.Example(prompt="abc", answer="x"), data.Example(prompt="a", answer="yz")]
    feats = data.build_features(examples, char_tokenizer, {})
    for (ids, answer), f, ex in zip(data.build_prompts(examples, char_tokenizer, {}), feats, examples, strict=True):
        n = f["labels"].index(next(x for x in f["labels"] if x != -100))
        assert ids == f["input_ids"][:n] and answer == ex.answer


def test_a_tokenizer_appending_eos_does_not_end_the_prompt(char_tokenizer):
    class EosAppending:
        eos_token_id, eos_token, pad_token_id = 3, "<eos>", 0

        def __call__(self, texts, add_special_tokens=True):
            ids = char_tokenizer(texts, add_special_tokens=False)["input_ids"]
            return {"input_ids": [r + [3] if add_special_tokens else r for r in ids]}

    [f] = data.build_features([data.Example(prompt="ab", answer="c")], EosAppending(), {})
    assert f["input_ids"].count(3) == 1 and f["input_ids"][-1] == 3


def test_unknown_family_is_a_config_error(char_tokenizer):
    with pytest.raises(ConfigError, match="model family 'llama2'"):
        data.build_features([], char_tokenizer, {}, family="llama2")


def test_chatglm2_family_goes_through_models_formats(char_tokenizer):
    """A raw query (no pattern) is wrapped in ChatGLM2's own [Round 1] template by xfed.models.formats."""
    ex = data.Example(prompt="ab", answer="c", query="ab")
    [f] = data.build_features([ex], char_tokenizer, {}, family="chatglm2")
    text = char_tokenizer.decode(f["input_ids"], skip_special_tokens=True)
    assert text == "[Round 1]\n\n问：ab\n\n答：c"
    n_prompt = f["labels"].count(-100)
    [(ids, answer)] = data.build_prompts([ex], char_tokenizer, {}, family="chatglm2")
    assert ids == f["input_ids"][:n_prompt] and answer == "c"
    assert f["labels"][n_prompt:] == f["input_ids"][n_prompt:] and f["input_ids"][-1] == char_tokenizer.eos_token_id


def test_model_family_from_the_loaded_model():
    from types import SimpleNamespace

    def model(**cfg):
        return SimpleNamespace(config=SimpleNamespace(**cfg))

    assert data.model_family(model(model_type="glm", xfed_source_family="chatglm3")) == "chatglm3"
    assert data.model_family(model(model_type="chatglm")) == "chatglm"
    assert data.model_family(model(model_type="chatglm6b")) == "chatglm"
    assert data.model_family(model(model_type="glm")) == "auto"
    assert data.model_family(None) == "auto"


def test_collator_right_pads_with_masked_labels(char_tokenizer):
    feats = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [5]}]
    batch = collate.make_collator(char_tokenizer)(feats)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    keep_pad = collate.make_collator(char_tokenizer, {"ignore_pad_token_for_loss": False}, pad_to_multiple_of=4)(feats)
    assert keep_pad["labels"].tolist() == [[-100, 6, 7, 0], [5, 0, 0, 0]]


def _demo_data_module():
    import importlib.util

    script = Path(__file__).resolve().parents[3] / "scripts" / "make_demo_data.py"
    spec = importlib.util.spec_from_file_location("make_demo_data", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    mod = _demo_data_module()
    out = tmp_path_factory.mktemp("demo_data")
    assert mod.main(["--out", str(out), "--seed", "3"]) == 0
    return mod, out


def test_demo_data_reads_the_same_from_qa_json_and_jsonl(demo_data):
    """The two forms make_demo_data writes yield identical examples (prompt column holds the rendered text)."""
    mod, out = demo_data
    qa = data.read_records([{"type": "QA", "path": str(out / "node-1.json")}], {"prompt_pattern": XFL_PATTERN})
    lines = data.read_records(str(out / "node-1.jsonl"), {"prompt_column": "prompt", "response_column": "response"})
    assert [(e.prompt, e.answer) for e in qa] == [(e.prompt, e.answer) for e in lines]
    assert len(qa) == mod.N_TRAIN_PER_PARTY


def test_demo_data_is_non_iid_disjoint_balanced_and_deterministic(demo_data, tmp_path):
    from collections import Counter

    mod, out = demo_data
    shards = {p.stem: json.loads(p.read_text(encoding="utf-8"))["instances"] for p in out.glob("*.json")
              if p.stem != "manifest"}
    for party, main in mod.PARTIES.items():
        counts = Counter(i["skill"] for i in shards[party])
        assert counts[main] == round(0.9 * mod.N_TRAIN_PER_PARTY)
        assert sorted(counts.values())[:2] == [mod.N_TRAIN_PER_PARTY // 20] * 2
    assert set(Counter(i["skill"] for i in shards["heldout"]).values()) == {mod.N_HELDOUT_PER_SKILL}
    words = [i["input"].split(" ", 1)[1] for inst in shards.values() for i in inst]
    assert len(words) == len(set(words))  # no word in two examples, so held-out words are unseen
    for inst in shards["heldout"]:
        skill, word = inst["input"].split(" ", 1)
        assert inst["output"] == mod.SKILLS[skill](word) != word
    again = tmp_path / "again"
    assert mod.main(["--out", str(again), "--seed", "3"]) == 0
    assert (again / "node-2.jsonl").read_bytes() == (out / "node-2.jsonl").read_bytes()
    assert mod.main(["--out", str(tmp_path / "other"), "--seed", "4"]) == 0
    assert (tmp_path / "other" / "node-2.jsonl").read_bytes() != (out / "node-2.jsonl").read_bytes()
