"""One job through everything a ChatGLM / Hugging Face user looks at (issue 19), on real processes and Redis:

PrimiHub's guide example ChatGlm.json (paths substituted) -> `xfed import-primihub` -> `-c validate` -> the
job runs (P-tuning v2, 2 rounds of 3 steps, otp) with `report_to: ["tensorboard"]` on every party and
THUDM's metrics in the per-round evaluation, while `-c serve` is open in a real headless Chromium that
must see the round count advance on its own (the page refreshes itself). Afterwards: TensorBoard event
files read back with tensorboard's reader, trainer_state.json with every step, `xfed report --plot` PNG.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.browser import Browser, chromium_path
from tests.integration.conftest import REPO, load_module, serve
from tests.tensorboard_events import read_scalars

pytestmark = pytest.mark.integration

_tiny = load_module("xfed_tests_chatglm_conftest", REPO / "tests" / "operators" / "horizontal_chatglm" / "conftest.py")


# what the page shows now: [job state, rounds done], or null while it is still loading
SHOWN = ("(() => { const s = document.getElementById('job-state'), r = document.getElementById('rounds-done');"
         " return s && r ? [s.textContent, r.textContent] : null; })()")


UPDATED = "(() => { const u = document.getElementById('updated'); return u ? u.textContent : null; })()"


def guide_example(root: Path, model: Path) -> dict:
    """The example ChatGlm.json of PrimiHub's ChatGLM guide, with its ~/czl paths replaced by tmp ones."""
    return {
        "party_info": {"Alice": {"ip": "172.21.1.58", "port": 50050, "use_tls": False},
                       "Bob": {"ip": "172.21.1.63", "port": 50051, "use_tls": False},
                       "Charlie": {"ip": "172.21.1.58", "port": 50052, "use_tls": False},
                       "task_manager": "127.0.0.1:50050"},
        "component_params": {
            "roles": {"server": "Charlie", "client": ["Alice", "Bob"]},
            "common_params": {"model": "Chat_glm", "process": "train", "aggration_iter": 2, "train_iter": 3},
            "role_params": {
                "Alice": {"path": str(root / "ChatGLM-6B-Med" / "ptuning"), "train_file": "Meddata/train.json",
                          "validation_file": "Meddata/train.json", "prompt_column": "prompt",
                          "response_column": "response", "history_column": "history",
                          "model_name_or_path": str(model), "output_dir": "output/Alice_result", "num_examples": 10},
                "Bob": {"path": str(root / "ChatGLM-6B" / "ptuning"), "train_file": "AdvertiseGen/train.json",
                        "validation_file": "AdvertiseGen/dev.json", "prompt_column": "content",
                        "response_column": "summary", "model_name_or_path": str(model),
                        "output_dir": "output/Bob_result", "num_examples": 10},
            },
        },
    }


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_party_files(root: Path) -> None:
    words = ["abc", "dog", "moon", "star", "tree", "fish"]
    med = root / "ChatGLM-6B-Med" / "ptuning" / "Meddata"
    write_jsonl(med / "train.json", [{"prompt": f"cure {w}", "response": w[::-1],
                                      "history": [["hi", "ok"]] if i % 2 else []} for i, w in enumerate(words)])
    adv = root / "ChatGLM-6B" / "ptuning" / "AdvertiseGen"
    write_jsonl(adv / "train.json", [{"content": f"type#{w}", "summary": f"a {w}"} for w in words])
    write_jsonl(adv / "dev.json", [{"content": f"type#{w}", "summary": f"a {w}"} for w in words[:3]])


@pytest.mark.skipif(chromium_path() is None, reason="chromium not installed (scripts/setup.sh installs it)")
def test_primihub_job_reports_to_tensorboard_and_the_status_page_follows_it(tmp_path):
    root = tmp_path
    model = _tiny.build_tiny_glm(root / "tiny-glm", seed=0)
    write_party_files(root)
    (root / "ChatGlm.json").write_text(json.dumps(guide_example(root, model), indent=1))
    cfg = root / "config"

    def xfed(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(REPO / "xfed.py"), *args], capture_output=True, text=True,
                              cwd=root, timeout=timeout)

    res = xfed("import-primihub", str(root / "ChatGlm.json"), str(cfg))
    assert res.returncode == 0, res.stderr
    assert "party_info" in res.stdout and "num_examples" in res.stdout  # the unmapped keys, one line each

    with serve(root, trainers=["Alice", "Bob"], assist="Charlie", namespace="primihub", interval=1.0) as fed:
        fed_conf = json.loads((cfg / "fed_conf.json").read_text())
        fed_conf.update(redis_server=fed.redis.address, redis={"namespace": "primihub"}, heartbeat_interval=1.0)
        (cfg / "fed_conf.json").write_text(json.dumps(fed_conf))
        for node in ("Alice", "Bob", "Charlie"):
            path = cfg / f"trainer_config_{node}.json"
            stages = json.loads(path.read_text())
            assert stages[0]["model_info"]["config"] == {"quantization_bit": 4}
            stages[0]["model_info"]["config"] = {}  # the tiny model is no THUDM fp16 folder to quantize
            stages[0]["train_info"]["train_params"].setdefault("trainer", {})["report_to"] = ["tensorboard"]
            path.write_text(json.dumps(stages))
        assert xfed("-c", "validate", "--config_path", str(cfg)).returncode == 0
        fed.config.mkdir(exist_ok=True)  # the harness' own folder is unused: every process gets cfg
        fed.config_of = lambda _name: cfg  # type: ignore[method-assign]
        fed.start_all()

        page = subprocess.Popen([sys.executable, str(REPO / "xfed.py"), "-c", "serve", "--port", "0",
                                 "--config_path", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=root, env=fed.env())
        browser = None
        try:
            line = page.stdout.readline()
            assert "http://127.0.0.1:" in line, line
            url = line.split()[3]
            # the page is open (and shows no job) before the job starts: it must pick the job up by itself
            browser = Browser(url + "?every=250", root / "chromium-profile")
            fed.wait_for(lambda: browser.evaluate(UPDATED) not in (None, "never"), "the page's first refresh")
            assert browser.evaluate(SHOWN) == ["-", "0"] and not browser.evaluate(UPDATED).startswith("error")
            start = xfed("-c", "start", "--config_path", str(cfg))
            assert start.returncode == 0, start.stderr + fed.logs()
            job_id = start.stdout.split()[0]
            seen: list[tuple[str, int]] = []  # (job state, rounds done) as the page showed them
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                shown = browser.evaluate(SHOWN)
                if shown and shown[1].isdigit() and (not seen or tuple(seen[-1]) != (shown[0], int(shown[1]))):
                    seen.append((shown[0], int(shown[1])))
                if seen and seen[-1][0] in ("SUCCESSFUL", "FAILED", "STOPPED"):
                    break
                time.sleep(0.2)
            job = fed.wait_job(job_id, timeout=60)
            assert job.state.value == "SUCCESSFUL", f"{job}\n{fed.logs()}"
            running = [n for state, n in seen if state == "RUNNING"]
            assert running, seen
            assert max(n for _, n in seen) == 2 and max(n for _, n in seen) > min(running), seen  # it advanced
            assert [n for _, n in seen] == sorted(n for _, n in seen), seen
            assert browser.evaluate("document.querySelectorAll('#chart polyline.series').length") >= 2
            nodes_text = browser.evaluate("document.getElementById('nodes').textContent")
            assert "Alice" in nodes_text and "Charlie" in nodes_text
        finally:
            if browser is not None:
                browser.close()
            page.terminate()
            page.wait(timeout=30)

    for node, out in (("Alice", root / "ChatGLM-6B-Med/ptuning/output/Alice_result" / job_id),
                      ("Bob", root / "ChatGLM-6B/ptuning/output/Bob_result" / job_id),
                      ("Charlie", cfg / "output/Charlie" / job_id)):
        assert (out / "final" / "adapter_config.json").is_file(), node
        scalars, texts = read_scalars(out / "runs")
        assert [v for _, v in scalars["train/round/round"]] == [1.0, 2.0], node
        assert any(f'"node": "{node}"' in t for t in texts), node
        state = json.loads((out / "trainer_state.json").read_text())
        if node != "Charlie":  # the aggregator trains nothing
            assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4, 5, 6], node
            steps = [e for e in state["log_history"] if "loss" in e]
            assert [e["step"] for e in steps] == [1, 2, 3, 4, 5, 6] and all("grad_norm" in e for e in steps), node
            last = json.loads((out / "metrics.json").read_text())["rounds"][-1]
            assert {"rouge-1", "rouge-2", "rouge-l", "bleu-4", "exact_match"} <= set(last), node
        else:
            assert [e["participants"] for e in state["log_history"]] == [2, 2]

    job_dir = root / "plots"  # report reads one folder of node folders: gather the three parties' outputs
    job_dir.mkdir()
    for node, out in (("Alice", root / "ChatGLM-6B-Med/ptuning/output/Alice_result" / job_id),
                      ("Bob", root / "ChatGLM-6B/ptuning/output/Bob_result" / job_id)):
        (job_dir / node).symlink_to(out)
    res = xfed("report", str(job_dir), "--plot", str(root / "loss.png"))
    assert res.returncode == 0, res.stderr
    assert "rouge-1" in res.stdout and f"plot: {root / 'loss.png'}" in res.stdout
    assert (root / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
