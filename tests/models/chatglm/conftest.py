"""Fixtures for the ChatGLM-6B (v1) tests: the v1-tiny THUDM folder rebuilt from ../shared, its reference."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO.parent / "shared" / "fixtures" / "chatglm"
V1 = FIXTURES / "v1-tiny"
BASE_V1 = FIXTURES / "base" / "chatglm-6b"

torch.set_num_threads(1)


def build_thudm_folder(fixture: Path, out: Path) -> Path:
    """The fixture's THUDM folder, written by the fixture's own make_folder.py (run in-process)."""
    spec = importlib.util.spec_from_file_location("chatglm_make_folder_v1", FIXTURES / "make_folder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(str(fixture), str(out))
    return out


@pytest.fixture(scope="session")
def v1_ref() -> dict:
    if not V1.is_dir():
        pytest.skip(f"{V1} not present")
    return json.loads((V1 / "reference.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def v1_folder(tmp_path_factory, v1_ref) -> Path:
    return build_thudm_folder(V1, tmp_path_factory.mktemp("v1") / "chatglm-6b-tiny")


@pytest.fixture(scope="session")
def v1_loaded(v1_folder):
    """(model, tokenizer) shared by read-only tests; tests that wrap or train load their own."""
    from xfed.models.chatglm import from_thudm_folder

    return from_thudm_folder(v1_folder)


@pytest.fixture
def v1_fresh(v1_folder):
    from xfed.models.chatglm import from_thudm_folder

    return from_thudm_folder(v1_folder)


def compare_rows(logits: torch.Tensor, rows: list[dict], probe_ids: list[int], atol: float = 1e-3) -> None:
    """Assert logits match reference rows: probe logits and logsumexp within atol, argmax exactly."""
    probe = torch.tensor(probe_ids)
    for b, row in enumerate(rows):
        lg = logits[b, row["positions"]].float()
        got_probe = lg[:, probe]
        want_probe = torch.tensor(row["probe"])
        assert torch.allclose(got_probe, want_probe, atol=atol, rtol=0), \
            f"row {b}: probe logits differ by {(got_probe - want_probe).abs().max().item():.2e}"
        lse = torch.logsumexp(lg, dim=-1)
        assert torch.allclose(lse, torch.tensor(row["logsumexp"]), atol=atol, rtol=0), f"row {b}: logsumexp"
        assert lg.argmax(-1).tolist() == row["argmax"], f"row {b}: argmax"
