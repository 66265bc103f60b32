"""Problems found in config files, rendered one line each: `file: stage N: key.path: message`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from xfed.errors import ConfigError

Severity = Literal["error", "warning", "note"]


@dataclass(frozen=True)
class Problem:
    """One finding; `str()` is the line a user sees."""

    file: str
    message: str
    key: str = ""
    stage: int | None = None
    severity: Severity = "error"

    def __str__(self) -> str:
        parts = [self.file]
        if self.stage is not None:
            parts.append(f"stage {self.stage}")
        if self.key:
            parts.append(self.key)
        parts.append(self.message)
        return ": ".join(p for p in parts if p)


def loc_to_key(loc: tuple | list, prefix: str = "") -> str:
    """('input', 'trainset', 0, 'path') -> 'input.trainset[0].path' (after `prefix`)."""
    key = prefix
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            key += f".{part}" if key else str(part)
    return key


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _message(err: dict) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "missing":
        return "required key is missing"
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    msg = msg.replace("\n", " ")
    if msg[:1].isupper() and not msg[1:2].isupper():
        msg = msg[0].lower() + msg[1:]
    value = err.get("input")
    # Show what was found where it helps (scalars only: a dict would swamp the line).
    if kind not in ("unknown_key",) and isinstance(value, (str, int, float, bool)) and "got" not in msg:
        msg += f", got {_short(value)}"
    return msg


def from_validation_error(exc: ValidationError, file: str, *, stage: int | None = None,
                          prefix: str = "") -> list[Problem]:
    """One Problem per pydantic error, keyed by its dotted location under `prefix`."""
    out = []
    for err in exc.errors(include_url=False):
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        out.append(Problem(file=file, stage=stage, key=loc_to_key(loc, prefix), message=_message(err)))
    return out


def errors_only(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def raise_first(problems: list[Problem], hint: str = "") -> None:
    """ConfigError with the first error (one line), mentioning how many more there are."""
    errors = errors_only(problems)
    if not errors:
        return
    more = f" (and {len(errors) - 1} more problem(s){hint})" if len(errors) > 1 else ""
    raise ConfigError(f"{errors[0]}{more}")
