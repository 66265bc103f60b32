"""The operators' settings models, registered by the operators: config imports no operator.

`xfed.operators.registry.register_operator_settings()` hands each operator's pydantic `Params`
(and its optional stage checks) to this table; `xfed -c validate` and `--schema` read it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel

from xfed.errors import ConfigError


@dataclass(frozen=True)
class OperatorSettings:
    """What config needs of one operator to check a stage's train_params."""

    params: type[BaseModel]
    # (stage, complete=) -> [(key, message[, severity])]: checks that need the whole stage
    check_stage: Callable[..., list[tuple[str, ...]]] | None = None
    # (assist Params, party's partial Params) -> (merged Params, ["key: note"]): the assist trainer's win
    merge_authoritative: Callable[[Any, Any], tuple[BaseModel, list[str]]] | None = None


class OperatorUnavailable(ConfigError):
    """A known operator whose settings could not be loaded on this machine (the message says why)."""


_REGISTERED: dict[str, OperatorSettings | str] = {}  # str: why the operator is unavailable here


def register(name: str, settings: OperatorSettings | str) -> None:
    """Register an operator's settings (or, as a string, why they could not be loaded here)."""
    _REGISTERED[name] = settings


def known() -> list[str]:
    return sorted(_REGISTERED)


def settings_of(name: str) -> OperatorSettings:
    """ConfigError for an unknown operator; OperatorUnavailable for one that failed to load."""
    try:
        settings = _REGISTERED[name]
    except KeyError:
        raise ConfigError(f"model_info.name: unknown operator {name!r} (known: {', '.join(known())})") from None
    if isinstance(settings, str):
        raise OperatorUnavailable(settings)
    return settings
