"""`report JOB_DIR --plot PNG`: the table (THUDM columns only when computed), a PNG with the curves, usage errors."""
from __future__ import annotations

import json

from xfed.operators.horizontal_chatglm.plot import _round_position
from xfed.operators.horizontal_chatglm.report import main


def job(tmp_path, thudm: bool):
    for i, node in enumerate(("node-1", "node-2")):
        rounds = []
        for k in (1, 2, 3):
            r = {"round": k, "rounds": 3, "node": node, "step": 2 * k, "train_loss": 2.0 / k + i,
                 "eval_loss": 2.5 / k, "exact_match": 0.1 * k, "rouge_l": 0.2 * k}
            if thudm:
                r.update({"rouge-1": 10.0 * k, "rouge-2": 5.0 * k, "rouge-l": 9.0 * k, "bleu-4": 3.0 * k})
            rounds.append(r)
        (tmp_path / node).mkdir(parents=True)
        (tmp_path / node / "metrics.json").write_text(json.dumps({"node": node, "rounds": rounds}))
        history = [{"step": s, "loss": 3.0 - 0.2 * s, "learning_rate": 0.01, "grad_norm": 1.0} for s in range(1, 7)]
        history.append({"round": 1, "step": 2, "eval_loss": 1.0})
        (tmp_path / node / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    return tmp_path


def test_table_and_png(tmp_path, capsys):
    png = tmp_path / "plots" / "loss.png"
    assert main([str(job(tmp_path / "job", thudm=True)), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "bleu-4" in out and out.count("node-1") == 3 and f"plot: {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_thudm_columns_only_when_computed_and_usage_errors(tmp_path, capsys):
    assert main([str(job(tmp_path, thudm=False))]) == 0
    assert "bleu-4" not in capsys.readouterr().out
    assert main([str(tmp_path), "--plot"]) == 2
    assert main([str(tmp_path / "nothing")]) == 2
    assert "no */metrics.json with rounds" in capsys.readouterr().err


def test_steps_land_between_their_rounds():
    ends = [(1, 2), (2, 4), (3, 6)]
    assert [_round_position(s, ends) for s in (1, 2, 3, 6)] == [0.5, 1.0, 1.5, 3.0]
