"""scripts/bench_quality.py --quick: every arm runs (real operator, real scheduler + daemons + redis-server) and
the JSON line holds sane values. A smoke test of the plumbing, not of learning (a random model, a few steps)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bench_quality.py"
ARMS = {"base", "local_node-1", "local_node-2", "local_node-3", "federated_plain", "federated_otp", "centralized"}


def _bench():
    spec = importlib.util.spec_from_file_location("xfed_scripts_bench_quality", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up while being defined
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """An untrained tiny model with the demo tokenizer (pre-training steps 0), built in this process."""
    root = tmp_path_factory.mktemp("bench-quality-assets")
    spec = importlib.util.spec_from_file_location("xfed_scripts_make_tiny_model", REPO / "scripts" / "make_tiny_model.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    assert mod.main(["--out", str(root / "model"), "--steps", "0", "--min-accuracy", "0"]) in (0, None)
    return root


@pytest.mark.integration
def test_quick_run_scores_every_arm_and_otp_equals_plain(assets, tmp_path, capsys):
    plot = tmp_path / "curves.png"
    rc = _bench().main(["--quick", "--json", "--plot", str(plot), "--model", str(assets / "model"),
                        "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-3000:]
    result = json.loads(captured.out.strip().splitlines()[-1])

    assert set(result["arms"]) == ARMS
    for name, scores in result["arms"].items():
        assert set(scores) == {"exact_match", "rouge_l"}, name
        assert 0.0 <= scores["exact_match"] <= 100.0 and 0.0 <= scores["rouge_l"] <= 100.0, name
    assert result["arms"]["base"]["exact_match"] == 0.0  # an untrained model does not know the ciphers
    steps = result["steps"]
    assert steps["centralized"] == 3 * steps["local_node-1"] == 3 * steps["federated_plain"] > 0  # same total compute
    assert {k: len(v) for k, v in result["curves"].items()} == {a: 2 for a in ARMS - {"base", "federated_otp"}}
    assert 0.0 <= result["max_abs_diff_otp_vs_plain"] <= 1e-6
    assert result["targets_met"]["otp_equals_plain"] is True
    assert set(result["measured"]) == {"fed_vs_central_gap", "fed_over_best_local", "max_abs_diff_otp_vs_plain",
                                       "wall_s"}
    assert result["task"]["name"] == "pure8"  # the default task, written by the script under --out
    assert result["wall_s"] > 0 and result["load_avg_1m"]["max"] >= result["load_avg_1m"]["min"] >= 0
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the table went to stderr, naming every arm
    assert "federated, otp aggregation" in captured.err and "centralized" in captured.err
    # every federated node wrote its per-round metrics (the plot's loss curves come from them)
    out = tmp_path / "out" / "federation" / "output"
    metrics = sorted(out.glob("*/node-2/metrics.json"))
    assert len(metrics) == 2 and all(len(json.loads(m.read_text())["rounds"]) == 2 for m in metrics)


def test_bad_model_folder_is_a_one_line_error(tmp_path, capsys):
    rc = _bench().main(["--quick", "--model", str(tmp_path / "nope"), "--data", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: --model:") and "nope" in err and len(err.splitlines()) == 1


def test_more_rounds_than_steps_is_refused(capsys):
    rc = _bench().main(["--quick", "--steps", "2", "--rounds", "3"])
    assert rc == 2 and "--rounds 3" in capsys.readouterr().err


def test_federated_batch_keeps_the_examples_and_sets_the_parties_steps_and_batch(capsys):
    bench = _bench()
    s = bench.settings_from(bench.parse_args(["--steps", "300", "--rounds", "960", "--federated-batch", "5",
                                              "--arms", "plain"]))
    assert s.federated_steps == 960 and 3 * 960 * 5 == 3 * s.steps * s.batch  # the centralized arm's examples
    trainer = bench.train_params(s, "plain", s.federated_steps, federated=True)["trainer"]
    assert trainer["per_device_train_batch_size"] == 5 and trainer["max_steps"] == 960
    assert bench.train_params(s, "plain", 900)["trainer"]["per_device_train_batch_size"] == 16  # centralized
    # the lone parties take S = 300 steps, the centralized arm 900: 960 rounds are more than they have
    assert bench.main(["--steps", "300", "--rounds", "960", "--federated-batch", "5", "--arms", "local,plain"]) == 2
    assert "more rounds than the local arm's steps (300)" in capsys.readouterr().err
    assert bench.main(["--steps", "300", "--rounds", "960", "--federated-batch", "5", "--arms", "centralized"]) == 2
    assert "more rounds than the centralized arm's steps (900)" in capsys.readouterr().err


def test_trainer_reaches_every_arm_and_local_trainer_overrides_it_for_the_parties(capsys):
    bench = _bench()
    s = bench.settings_from(bench.parse_args(["--trainer", '{"warmup_steps": 60, "adam_beta2": 0.99}',
                                              "--local-trainer", '{"warmup_steps": 0}']))
    central = bench.train_params(s, "plain", 900)["trainer"]
    parties = bench.train_params(s, "plain", 900, federated=True)["trainer"]
    assert (central["warmup_steps"], central["adam_beta2"]) == (60, 0.99)
    assert (parties["warmup_steps"], parties["adam_beta2"]) == (0, 0.99)
    assert bench.main(["--quick", "--trainer", "[1]"]) == 2
    assert "--trainer: expected a JSON object" in capsys.readouterr().err


def test_prefix_hidden_size_reaches_the_peft_section_only_when_given():
    bench = _bench()
    s = bench.settings_from(bench.parse_args(["--peft", "PREFIX_TUNING", "--prefix-projection",
                                              "--prefix-hidden-size", "512", "--pre-seq-len", "32"]))
    assert bench.peft_section(s) == {"PREFIX_TUNING": {"pre_seq_len": 32, "prefix_projection": True,
                                                       "prefix_hidden_size": 512}}
    assert "prefix_hidden_size" not in bench.peft_section(bench.settings_from(bench.parse_args(["--peft", "PREFIX_TUNING"])))["PREFIX_TUNING"]


def test_prefix_init_std_reaches_the_peft_section_only_when_given_and_is_checked(capsys):
    bench = _bench()
    s = bench.settings_from(bench.parse_args(["--peft", "PREFIX_TUNING", "--prefix-init-std", "0.1"]))
    assert bench.peft_section(s)["PREFIX_TUNING"]["prefix_init_std"] == 0.1
    assert s.to_dict()["prefix_init_std"] == 0.1
    assert "prefix_init_std" not in bench.peft_section(bench.settings_from(bench.parse_args(["--peft", "PREFIX_TUNING"])))["PREFIX_TUNING"]
    assert bench.main(["--quick", "--peft", "PREFIX_TUNING", "--prefix-init-std", "-1"]) == 2
    assert "--prefix-init-std: Input should be greater than 0" in capsys.readouterr().err
    assert bench.main(["--quick", "--peft", "PREFIX_TUNING", "--prefix-init-std", "11"]) == 2
    assert "--prefix-init-std: Input should be less than or equal to 10" in capsys.readouterr().err


def test_prefix_sizes_are_checked_by_the_operators_bounds(capsys):
    bench = _bench()
    assert bench.main(["--quick", "--peft", "PREFIX_TUNING", "--pre-seq-len", "0"]) == 2
    assert "--pre-seq-len: Input should be greater than or equal to 1" in capsys.readouterr().err
    assert bench.main(["--quick", "--peft", "PREFIX_TUNING", "--pre-seq-len", "5000"]) == 2  # the config's le=4096
    assert "--pre-seq-len: Input should be less than or equal to 4096" in capsys.readouterr().err
    assert bench.main(["--quick", "--peft", "PREFIX_TUNING", "--prefix-projection", "--prefix-hidden-size", "0"]) == 2
    assert "--prefix-hidden-size: Input should be greater than or equal to 1" in capsys.readouterr().err


def test_the_federated_job_timeout_grows_with_the_rounds_and_can_be_set(capsys):
    bench = _bench()
    settings = lambda *a: bench.settings_from(bench.parse_args(["--peft", "PREFIX_TUNING", *a]))  # noqa: E731
    assert settings("--rounds", "60").federated_job_timeout == 1800.0
    assert settings("--arms", "plain", "--batch", "48", "--federated-batch", "16", "--steps", "800", "--rounds", "2400").federated_job_timeout == 4800.0
    assert settings("--job-timeout", "90").federated_job_timeout == 90.0
    assert bench.main(["--quick", "--job-timeout", "0"]) == 2
    assert "--job-timeout: must be > 0" in capsys.readouterr().err
