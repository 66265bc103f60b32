"""scripts/bench_bookkeeping.py: both ways write the same files; the row names what it measured."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_bookkeeping.py"


def _bench():
    spec = importlib.util.spec_from_file_location("xfed_scripts_bench_bookkeeping", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_both_ways_write_identical_files_and_a_json_row(capsys):
    assert _bench().main(["--rounds", "12", "--json"]) == 0
    out = capsys.readouterr().out
    row = json.loads(out.strip().splitlines()[-1])
    assert row["rounds"] == 12 and row["same_files"] is True
    assert {"whole_last_ms", "incremental_last_ms", "whole_total_s", "incremental_total_s", "last_ratio"} <= set(row)
    assert "files identical: True" in out


def test_bad_rounds_is_a_one_line_error(capsys):
    assert _bench().main(["--rounds", "0"]) == 2
    assert capsys.readouterr().err.strip() == "bench_bookkeeping: --rounds: must be >= 1"
