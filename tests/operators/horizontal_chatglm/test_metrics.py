"""Generation metrics and metrics.json."""
import json

import pytest

from xfed.operators.horizontal_chatglm.metrics import MetricsLog, generation_scores, lcs_length, rouge_l_chars


def test_lcs_and_character_rouge_l():
    assert lcs_length("abcde", "ace") == 3
    assert rouge_l_chars("abc", "abc") == 1.0
    assert rouge_l_chars("abc", "xyz") == 0.0
    # lcs("abcd", "abxd") = 3: precision 3/4, recall 3/4
    assert rouge_l_chars("abcd", "abxd") == pytest.approx(0.75)
    assert rouge_l_chars("床前明月光", "床前明月") == pytest.approx(2 * 1 * 0.8 / 1.8)


def test_generation_scores_average_over_examples():
    scores = generation_scores(["abc ", "abd"], ["abc", "xyz"])
    assert scores["exact_match"] == 0.5
    assert scores["rouge_l"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        generation_scores(["a"], [])


def test_metrics_log_rewrites_the_file_each_round(tmp_path):
    log = MetricsLog(tmp_path / "out" / "metrics.json", {"node": "node-1"})
    log.add({"round": 1, "train_loss": 2.0})
    log.add({"round": 2, "train_loss": 1.5})
    log.write(final="x")
    data = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert data["node"] == "node-1" and data["final"] == "x"
    assert [r["round"] for r in data["rounds"]] == [1, 2]
    assert log.eta_seconds(2, 4) >= 0.0
