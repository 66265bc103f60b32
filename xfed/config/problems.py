"""Problems found in config files, rendered one line each: `file: stage N: key.path: message`."""
from __future__ import annotations

import re
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


_UNION_TAG = re.compile(r"^((list|dict|set|tuple|literal|function-[a-z-]+)\[.*\]|str|int|float|bool|none)$")


def _is_tag(part: Any) -> bool:
    """pydantic names the branch of a union (or a wrapped validator) in the location: drop it."""
    return isinstance(part, str) and bool(_UNION_TAG.match(part))


def from_validation_error(exc: ValidationError, file: str, *, stage: int | None = None,
                          prefix: str = "") -> list[Problem]:
    """One Problem per located pydantic error, keyed by its dotted location under `prefix`.

    The errors pydantic gives for each branch of a union (`list[str] | str`) become one line.
    """
    grouped: dict[str, list[dict]] = {}
    for err in exc.errors(include_url=False):
        key = loc_to_key([p for p in err["loc"] if not _is_tag(p)], prefix)
        grouped.setdefault(key, []).append(err)
    out = []
    for key, errs in grouped.items():
        branches = [e for e in errs if e["loc"] and _is_tag(e["loc"][-1])]
        if len(branches) > 1 and len(branches) == len(errs):
            wants = [e["msg"].removeprefix("Input should be ") for e in branches]
            merged = dict(branches[0], type="union", msg="input should be " + " or ".join(wants))
            out.append(Problem(file=file, stage=stage, key=key, message=_message(merged)))
        else:
            out += [Problem(file=file, stage=stage, key=key, message=_message(e)) for e in errs]
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
