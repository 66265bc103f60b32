"""Operator registry keyed by `model_info.name`; imports lazily so validation never loads torch.

Each operator is a package `xfed.operators.<name>` with:
- `config.py` defining `Params` (pydantic v2 model of `train_info.train_params`; pydantic only);
- `__init__.py` (or `operator.py`) exposing `run(ctx) -> dict` for one stage on one node.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from xfed.errors import ConfigError

OPERATORS: dict[str, str] = {
    "horizontal_mean": "xfed.operators.horizontal_mean",
    "horizontal_chatglm": "xfed.operators.horizontal_chatglm",
}


def known() -> list[str]:
    return sorted(OPERATORS)


def _package(name: str) -> str:
    try:
        return OPERATORS[name]
    except KeyError:
        raise ConfigError(f"model_info.name: unknown operator {name!r} (known: {', '.join(known())})") from None


def params_model(name: str):
    """The pydantic model that validates this operator's `train_params`."""
    return importlib.import_module(_package(name) + ".config").Params


def operator_module(name: str) -> ModuleType:
    """The module whose `run(ctx)` executes one stage of this operator."""
    return importlib.import_module(_package(name) + ".operator")
