"""Fixtures for config tests: a copy of a config template with every path it names made real."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from xfed.operators.registry import register_operator_settings

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "config_templates"
SHARED = REPO.parent / "shared"
XFL_COMPAT = SHARED / "xfl_compat"
DEMO_SHARDS = ("node-1", "node-2", "node-3", "assist_trainer", "heldout", "node-1_val", "node-2_val", "node-3_val")


def make_work_tree(root: Path) -> None:
    """What the demo scripts create under work/: a model folder and the QA shards (contents irrelevant)."""
    (root / "work" / "tiny-glm").mkdir(parents=True, exist_ok=True)
    for name in ("demo_data", "demo_data_a-h"):  # the P-tuning templates train on the letters a-h
        data = root / "work" / name
        data.mkdir(parents=True, exist_ok=True)
        for shard in DEMO_SHARDS:
            (data / f"{shard}.json").write_text('{"instruction": "text", "instances": []}\n', encoding="utf-8")


class ConfigSet:
    """A config folder under tmp_path with helpers to break it."""

    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, name: str) -> Path:
        return self.folder / name

    def read(self, name: str) -> Any:
        return json.loads(self.path(name).read_text(encoding="utf-8"))

    def write(self, name: str, value: Any) -> None:
        self.path(name).write_text(json.dumps(value, indent=2, ensure_ascii=False), encoding="utf-8")

    def write_text(self, name: str, text: str) -> None:
        self.path(name).write_text(text, encoding="utf-8")

    def edit(self, name: str, change: Callable[[Any], Any]) -> None:
        """Apply `change` to the parsed file in place and write it back (its return value is ignored)."""
        value = self.read(name)
        change(value)
        self.write(name, value)

    def params(self, node: str, stage: int = 0) -> Callable[[Callable[[dict], Any]], None]:
        """edit the train_params of `node`'s stage: `cs.params("node-1")(lambda tp: ...)`."""
        def apply(change: Callable[[dict], Any]) -> None:
            self.edit(f"trainer_config_{node}.json",
                      lambda stages: change(stages[stage]["train_info"]["train_params"]))
        return apply


@pytest.fixture
def config_set(tmp_path: Path) -> Callable[[str], ConfigSet]:
    """config_set("2party_lora") -> a copy of that template whose model and data paths exist."""
    def make(template: str = "2party_lora") -> ConfigSet:
        folder = tmp_path / "config_templates" / template
        shutil.copytree(TEMPLATES / template, folder)
        make_work_tree(tmp_path)
        return ConfigSet(folder)
    return make


# config imports no operator: the operators register their settings models, as the CLI does first
register_operator_settings()
