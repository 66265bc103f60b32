"""Pydantic building blocks for config models: strict types, unknown keys with "did you mean".

Every config model derives from `ConfigModel`: JSON types are taken as written (no "8" -> 8,
no true -> 1), and an unknown key is reported at its own location with the closest known key,
alongside any other problem in the same object (pydantic would otherwise stop at the first).
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest known name, or '' when nothing is close."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key_error(key: str, known: Iterable[str], loc: tuple = ()) -> InitErrorDetails:
    """An `unknown_key` error for `key` (located at `loc + (key,)`)."""
    return InitErrorDetails(
        type=PydanticCustomError("unknown_key", "unknown key{hint}", {"hint": did_you_mean(key, known)}),
        loc=(*loc, key),
        input=None,
    )


def reraise(title: str, extra: list[InitErrorDetails], err: ValidationError | None) -> None:
    """Raise one ValidationError holding `extra` plus the errors of `err` (nothing if both empty)."""
    details = list(extra)
    for e in err.errors() if err is not None else ():
        # Re-wrap as custom errors: the rendered message is kept verbatim, locations are kept.
        # No context is passed, so the rendered message is used verbatim (braces included).
        details.append(InitErrorDetails(type=PydanticCustomError(e["type"], e["msg"]), loc=e["loc"],
                                        input=e.get("input")))
    if details:
        raise ValidationError.from_exception_data(title, details)


class ConfigModel(BaseModel):
    """Base of every config section: strict JSON types, unknown keys named with a suggestion."""

    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)

    @classmethod
    def known_keys(cls) -> set[str]:
        keys = set(cls.model_fields)
        keys.update(f.alias for f in cls.model_fields.values() if f.alias)
        return keys

    @model_validator(mode="wrap")
    @classmethod
    def _unknown_keys(cls, data: Any, handler):
        if not isinstance(data, dict):
            return handler(data)
        known = cls.known_keys()
        # "_comment"-style keys are notes for humans (JSON has no comments): ignored, not flagged.
        data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("_"))}
        unknown = [k for k in data if k not in known]
        if not unknown:
            return handler(data)
        try:
            handler({k: v for k, v in data.items() if k in known})
            err = None
        except ValidationError as exc:
            err = exc
        reraise(cls.__name__, [unknown_key_error(str(k), known) for k in unknown], err)
        raise AssertionError("unreachable")  # reraise always raises here (unknown is non-empty)


def fail(title: str, problems: list[tuple[tuple, str]]) -> None:
    """Raise a ValidationError with one `check` error per (location, message); no-op if empty."""
    if problems:
        reraise(title, [
            InitErrorDetails(type=PydanticCustomError("check", msg),
                             loc=loc, input=None)
            for loc, msg in problems
        ], None)


class ExactlyOne(ConfigModel):
    """A section whose sub-sections are alternatives (`_CHOICES`): exactly one must be given."""

    _CHOICES: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _one(self) -> ExactlyOne:
        chosen = [k for k in self._CHOICES if getattr(self, k) is not None]
        if len(chosen) != 1:
            got = f" (found {' and '.join(chosen)})" if chosen else ""
            fail(type(self).__name__.lower(), [((), f"exactly one of {', '.join(self._CHOICES)} is required{got}")])
        return self

    @property
    def chosen(self) -> str:
        return next(k for k in self._CHOICES if getattr(self, k) is not None)
