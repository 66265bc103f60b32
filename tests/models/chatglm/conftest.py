"""Fixtures for the ChatGLM-6B (v1) tests: the v1-tiny THUDM folder rebuilt from ../shared, its reference."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from .._helpers import FIXTURES, make_thudm_folder

V1 = FIXTURES / "v1-tiny"
BASE_V1 = FIXTURES / "base" / "chatglm-6b"

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def v1_ref() -> dict:
    if not V1.is_dir():
        pytest.skip(f"{V1} not present")
    return json.loads((V1 / "reference.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def v1_folder(tmp_path_factory, v1_ref) -> Path:
    return make_thudm_folder(V1, tmp_path_factory.mktemp("v1") / "chatglm-6b-tiny")


@pytest.fixture(scope="session")
def v1_loaded(v1_folder):
    """(model, tokenizer) shared by read-only tests; tests that wrap or train load their own."""
    from xfed.models.chatglm import from_thudm_folder

    return from_thudm_folder(v1_folder)


@pytest.fixture
def v1_fresh(v1_folder):
    from xfed.models.chatglm import from_thudm_folder

    return from_thudm_folder(v1_folder)
