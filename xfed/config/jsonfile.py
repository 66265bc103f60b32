"""Reading a config JSON file strictly: line/column for syntax errors, duplicate keys, no NaN."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xfed.config.problems import Problem, loc_to_key

MAX_CONFIG_BYTES = 16 * 1024 * 1024  # configs are small; refuse to parse something that is not one


class _Obj(dict):
    """A JSON object that remembers keys it saw twice (json would silently keep the last)."""

    duplicates: list[str]


def _pairs(pairs: list[tuple[str, Any]]) -> _Obj:
    obj = _Obj()
    obj.duplicates = []
    for key, value in pairs:
        if key in obj and key not in obj.duplicates:
            obj.duplicates.append(key)
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _find_duplicates(value: Any, loc: tuple = ()) -> list[tuple[tuple, str]]:
    found: list[tuple[tuple, str]] = []
    if isinstance(value, _Obj):
        found += [(loc, key) for key in value.duplicates]
        for key, item in value.items():
            found += _find_duplicates(item, (*loc, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _find_duplicates(item, (*loc, i))
    return found


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def read_json(path: Path, label: str | None = None, *, stages: bool = False) -> tuple[Any, list[Problem]]:
    """(parsed value or None, problems) for the JSON file at `path`; `label` names it in messages.

    With `stages`, the top level is a stage list: a location `[i].key` is reported as stage i.
    """
    label = label or path.name
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, [Problem(label, f"file not found in {path.parent}")]
    except IsADirectoryError:
        return None, [Problem(label, "is a directory, not a JSON file")]
    except OSError as exc:
        return None, [Problem(label, f"cannot read: {exc.strerror or exc}")]
    if len(raw) > MAX_CONFIG_BYTES:
        return None, [Problem(label, f"is {len(raw)} bytes; a config file must be under {MAX_CONFIG_BYTES}")]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return None, [Problem(label, f"not UTF-8 text (byte offset {exc.start})")]
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        return None, [Problem(label, f"line {exc.lineno} column {exc.colno}: invalid JSON: {exc.msg}")]
    except ValueError as exc:  # NaN / Infinity
        return None, [Problem(label, f"invalid JSON: {exc}")]
    except RecursionError:
        return None, [Problem(label, "invalid JSON: nested too deeply")]
    problems = []
    for loc, key in _find_duplicates(value):
        stage = None
        if stages and loc and isinstance(loc[0], int):
            stage, loc = loc[0], loc[1:]
        problems.append(Problem(label, "duplicate key (JSON would silently keep only the last value)",
                                key=loc_to_key((*loc, key)), stage=stage))
    return _plain(value), problems
