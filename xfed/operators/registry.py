"""Operator registry keyed by `model_info.name`; imports lazily so validation never loads torch.

Each operator is a package `xfed.operators.<name>` with:
- `config.py` defining `Params` (pydantic v2 model of `train_info.train_params`; pydantic only),
  optionally `check_stage(stage, complete=)`; optionally `merge.py` with `merge_authoritative(assist, party)`;
- `operator.py` exposing `run(ctx) -> dict` for one stage on one node.

Config imports no operator: `register_operator_settings()` hands each operator's settings to
`xfed.config.operator_settings`, and whoever validates configs (the CLI, the tests) calls it first.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from xfed.config import operator_settings
from xfed.config.operator_settings import OperatorSettings
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


def register_operator_settings() -> None:
    """Register every operator's settings models into config (a broken operator: why, as a string)."""
    for name, package in OPERATORS.items():
        try:
            module = importlib.import_module(package + ".config")
            merge = (importlib.import_module(package + ".merge").merge_authoritative
                     if importlib.util.find_spec(package + ".merge") is not None else None)
            settings: OperatorSettings | str = OperatorSettings(
                params=module.Params, check_stage=getattr(module, "check_stage", None), merge_authoritative=merge)
        except ImportError as exc:
            settings = f"operator {name!r} is not available here ({exc})"
        except Exception as exc:  # a broken operator package must not turn into a traceback
            settings = f"operator {name!r} failed to load its config model: {type(exc).__name__}: {exc}"
        operator_settings.register(name, settings)
