"""What the v1 (chatglm) and v3 (chatglm3) reference tests share: the fixture folders, one forward or
generate call on a reference section, and the row comparison with the README tolerances."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "chatglm"
LOGIT_ATOL = 1e-3
LOSS_RTOL = 1e-4
SECTIONS = ("forward", "forward_single", "train_loss", "generate")  # what THUDM's code computed per fixture


def make_thudm_folder(fixture: Path, out: Path) -> Path:
    """The fixture's complete THUDM folder, written by the fixture's own make_folder.py (in-process)."""
    spec = importlib.util.spec_from_file_location("chatglm_make_folder", FIXTURES / "make_folder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(str(fixture), str(out))
    return out


def run_section(model, section: dict):
    """The model's output on a reference section's input_ids (+ attention_mask, labels where given)."""
    kwargs = {k: torch.tensor(section[k]) for k in ("input_ids", "attention_mask", "labels") if k in section}
    with torch.no_grad():
        return model(**kwargs)


def greedy_new_tokens(model, section: dict) -> list[list[int]]:
    """The tokens greedy generation adds to a reference `generate` section's prompts."""
    ids = torch.tensor(section["input_ids"])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.tensor(section["attention_mask"]),
                             max_new_tokens=section["max_new_tokens"], do_sample=False)
    return out[:, ids.shape[1]:].tolist()


def check_section(model, ref: dict, name: str, rows: list[dict] | None = None) -> None:
    """Assert the model reproduces reference section `name`: its greedy output ids, its loss, or its
    logit rows (`rows` instead of the section's own: the rows an adapter on that input gave)."""
    section = ref[name]
    if name == "generate":
        assert greedy_new_tokens(model, section) == section["output_ids"]
    elif name == "train_loss":
        assert run_section(model, section).loss.item() == pytest.approx(section["loss"], rel=LOSS_RTOL)
    else:
        compare_rows(run_section(model, section).logits, section["rows"] if rows is None else rows, ref["probe_ids"])


def compare_rows(logits: torch.Tensor, rows: list[dict], probe_ids: list[int], atol: float = LOGIT_ATOL) -> None:
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
