"""THUDM ptuning's scores: equal to what jieba + rouge_chinese + nltk give on fixed strings, THUDM's way."""
from __future__ import annotations

import numpy as np
import pytest

from xfed.errors import ConfigError
from xfed.operators.horizontal_chatglm.metrics_thudm import (
    parse_metrics,
    select_scores,
    thudm_scores,
    thudm_scores_one,
)

PAIRS = [  # (prediction, reference): AdvertiseGen-like Chinese, a partial match, English, an exact match
    ("这款连衣裙采用了修身的版型，显瘦又时尚。", "这款连衣裙版型修身，穿着显瘦，时尚百搭。"),
    ("我爱北京天安门", "我爱北京"),
    ("the cat sat on the mat", "the cat is on the mat"),
    ("今天天气很好", "今天天气很好"),
]
# what the pinned libraries computed for PAIRS[0] (and the means over PAIRS) when this test was written:
# a change here means a library changed its numbers, so THUDM comparisons would no longer hold
PINNED_FIRST = {"rouge-1": 75.0, "rouge-2": 17.3913, "rouge-l": 64.0, "bleu-4": 28.0516}


def thudm_reference(preds: list[str], labels: list[str]) -> dict[str, float]:
    """ChatGLM-6B ptuning/main.py's compute_metrics loop on decoded strings, written out here."""
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    score_dict = {"rouge-1": [], "rouge-2": [], "rouge-l": [], "bleu-4": []}
    for pred, label in zip(preds, labels, strict=True):
        hypothesis = list(jieba.cut(pred))
        reference = list(jieba.cut(label))
        result = Rouge().get_scores(" ".join(hypothesis), " ".join(reference))[0]
        for k, v in result.items():
            score_dict[k].append(round(v["f"] * 100, 4))
        bleu = sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3)
        score_dict["bleu-4"].append(round(bleu * 100, 4))
    return {k: float(np.mean(v)) for k, v in score_dict.items()}


def test_equals_thudm_compute_metrics_on_fixed_strings():
    preds, refs = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    ours = thudm_scores(preds, refs)
    ref = thudm_reference(preds, refs)
    assert ours.keys() == ref.keys()
    for k in ref:
        assert ours[k] == pytest.approx(ref[k], abs=1e-9), k
    assert thudm_scores_one(*PAIRS[0]) == PINNED_FIRST
    assert thudm_scores_one(*PAIRS[3]) == {"rouge-1": 100.0, "rouge-2": 100.0, "rouge-l": 100.0, "bleu-4": 100.0}
    assert 0 < ours["bleu-4"] < 100 and 0 < ours["rouge-2"] < ours["rouge-1"]


def test_empty_prediction_scores_zero_instead_of_raising():
    assert thudm_scores_one("", "你好世界") == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0}
    assert thudm_scores([], []) == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0}


def test_select_scores_gives_what_dataset_metrics_names():
    preds, refs = ["abc", "xyz"], ["abc", "xya"]
    assert set(select_scores(preds, refs, None)) == {"exact_match", "rouge_l"}
    both = select_scores(preds, refs, ["rouge-1", "bleu-4", "exact_match"])
    assert set(both) == {"rouge-1", "bleu-4", "exact_match"} and both["exact_match"] == 0.5


def test_unknown_metric_is_a_one_line_error():
    with pytest.raises(ConfigError, match="--metrics: unknown metric.*rouge-3"):
        parse_metrics("rouge-1,rouge-3", "--metrics")
    assert parse_metrics("rouge-1, bleu-4", "--metrics") == ["rouge-1", "bleu-4"]


def test_dataset_metrics_is_checked_by_the_config_model():
    from xfed.operators.horizontal_chatglm.config import DatasetParams, Params

    assert DatasetParams.model_validate({"metrics": ["rouge-1", "bleu-4"]}).metrics == ["rouge-1", "bleu-4"]
    with pytest.raises(ValueError, match="unknown metric.*rouge-3"):
        Params.model_validate({"dataset": {"metrics": ["rouge-3"]}}, context={"complete": False})


def test_infer_eval_prints_thudm_scores_of_its_own_answers(tiny_glm, tmp_path):
    import json

    from click.testing import CliRunner

    from xfed.infer import main
    from xfed.operators.horizontal_chatglm import inference

    qa = tmp_path / "heldout.json"
    qa.write_text(json.dumps({"instruction": "t", "instances": [{"input": "abc", "output": "cba"},
                                                                {"input": "dog", "output": "god"}]}))
    res = CliRunner().invoke(main, ["--model", str(tiny_glm), "--eval", str(qa), "--json", "--max-new-tokens", "3",
                                    "--metrics", "exact_match,rouge-1,rouge-l,bleu-4"])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.output.strip().splitlines()[-1])["base"]
    model, tokenizer = inference.load_for_inference(tiny_glm)
    pairs = inference.read_eval_pairs(qa, model, tokenizer)
    again = inference.evaluate_pairs(model, tokenizer, pairs, 3, metrics=["rouge-1", "rouge-l", "bleu-4"])
    expected = thudm_scores(again["predictions"], [r for _, r in pairs])
    for key in ("rouge-1", "rouge-l", "bleu-4"):
        assert printed[key] == pytest.approx(expected[key]), key
    bad = CliRunner().invoke(main, ["--model", str(tiny_glm), "--eval", str(qa), "--metrics", "bleu-5"])
    assert bad.exit_code == 2 and "unknown metric(s) bleu-5" in bad.output
