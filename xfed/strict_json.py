"""The one strict JSON reader: UTF-8, no NaN/Infinity, no duplicate keys, bounded size and depth.

Used for everything read from the network (stream messages, frame headers, safetensors indexes)
and, with a hook that collects duplicates instead of refusing them, for config files.
"""
from __future__ import annotations

import json
from typing import Any, Callable

MAX_DEPTH = 32


class StrictJSONError(ValueError):
    """Not strict JSON; the message is one line."""


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def loads(text: str, *, object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] = reject_duplicates) -> Any:
    """json.loads without NaN/Infinity and (by default) without duplicate keys; json's own errors."""
    return json.loads(text, parse_constant=reject_constant, object_pairs_hook=object_pairs_hook)


def depth(obj: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth, iteratively (no recursion on hostile input); stops counting past `limit`."""
    stack, deepest = [(obj, 1)], 0
    while stack:
        node, d = stack.pop()
        if d > limit:
            return d
        deepest = max(deepest, d)
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return deepest


def parse(data: bytes | bytearray | memoryview | str, *, max_bytes: int | None = None,
          max_depth: int = MAX_DEPTH) -> Any:
    """Strict JSON from bytes (UTF-8) or text; StrictJSONError with a one-line reason otherwise."""
    if max_bytes is not None and len(data) > max_bytes:
        raise StrictJSONError(f"{len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
        obj = loads(text)
    except (ValueError, RecursionError, UnicodeDecodeError, TypeError) as exc:
        raise StrictJSONError(f"not valid JSON ({str(exc)[:120]})") from None
    if depth(obj, max_depth) > max_depth:
        raise StrictJSONError(f"JSON nested deeper than {max_depth}")
    return obj
