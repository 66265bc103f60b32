"""What a new user types first: `python xfed.py` without the venv, and the report tool's --help."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_xfed_py_without_its_dependencies_says_how_to_set_up():
    # -S: no site-packages, as a system Python without the venv
    out = subprocess.run([sys.executable, "-S", "xfed.py", "-s"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert "./scripts/setup.sh" in out.stderr and "source env.sh" in out.stderr


def test_report_help_is_help_and_a_missing_folder_is_one_line(tmp_path, capsys):
    from xfed.operators.horizontal_chatglm.report import main

    assert main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: python -m xfed.operators.horizontal_chatglm.report JOB_DIR")
    assert main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no */metrics.json with rounds under" in err


def test_job_id_option_is_the_job_argument_of_stop_and_status_only(monkeypatch):
    from click.testing import CliRunner

    import xfed.client
    from xfed.cli import main

    seen = []
    monkeypatch.setattr(xfed.client, "run_client", lambda verb, path, args, **kw: seen.append((verb, args)) or 0)
    for argv, args in ((["-c", "stop", "--job_id", "4"], ["4"]), (["-c", "status", "--job-id", "4", "4"], ["4"]),
                       (["-c", "stop"], []), (["-c", "status", "5"], ["5"])):
        result = CliRunner().invoke(main, argv)
        assert result.exit_code == 0, result.output
        assert seen.pop() == (argv[1], args)
    for argv, words in ((["-c", "start", "--job_id", "4"], "--job_id goes with -c stop or -c status"),
                        (["-c", "stop", "--job_id", "4", "5"], "stop: job 5 and --job_id 4 disagree; give one"),
                        (["-c", "stop", "--job_id", "--follow"], "--job_id needs a JOB id")):
        result = CliRunner().invoke(main, argv)
        assert result.exit_code == 2 and f"error: {words}" in result.output and "Traceback" not in result.output
    assert not seen
