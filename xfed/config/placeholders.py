"""Path placeholders ([JOB_ID] [NODE_ID] [STAGE_ID]) and resolving relative paths.

A relative path in a config file is relative to the folder of the file that holds it (not to
the working directory of whoever starts the process), so a config folder can be moved whole.
Placeholders survive resolution and are filled in when a job runs.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from xfed.errors import ConfigError

PLACEHOLDERS = ("JOB_ID", "NODE_ID", "STAGE_ID")
# Upper-case only: a path such as data[1].json or run[a].txt is left alone.
_PLACEHOLDER = re.compile(r"\[([A-Z][A-Z0-9_]*)\]")
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


def placeholders_in(path: str) -> list[str]:
    """Names of the [PLACEHOLDER]s in `path`, in order."""
    return _PLACEHOLDER.findall(path)


def unknown_placeholders(path: str) -> list[str]:
    """The placeholders in `path` that xfed cannot fill (each an error at validation time)."""
    return [name for name in placeholders_in(path) if name not in PLACEHOLDERS]


def unknown_placeholder_message(path: str) -> str | None:
    unknown = unknown_placeholders(path)
    if not unknown:
        return None
    names = ", ".join(f"[{n}]" for n in unknown)
    return f"unknown placeholder {names} in {path!r} (known: [JOB_ID], [NODE_ID], [STAGE_ID])"


def fill_placeholders(path: str | os.PathLike, job_id: str | None = None, node_id: str | None = None,
                      stage_id: int | str | None = None) -> str:
    """`path` with [JOB_ID] [NODE_ID] [STAGE_ID] replaced; ConfigError for one that cannot be filled.

    A placeholder whose value is not given is an error only if the path uses it.
    """
    text = os.fspath(path)
    values = {"JOB_ID": job_id, "NODE_ID": node_id, "STAGE_ID": stage_id}

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            raise ConfigError(unknown_placeholder_message(text) or f"unknown placeholder [{name}]")
        value = values[name]
        if value is None:
            raise ConfigError(f"{text!r}: [{name}] used but no {name.lower().replace('_', ' ')} given")
        value = str(value)
        # A value becomes part of a path: never let it climb out of or split the folder.
        if not _SAFE_VALUE.match(value) or value in (".", ".."):
            raise ConfigError(f"{text!r}: [{name}] value {value!r} is not a safe path component")
        return value

    return _PLACEHOLDER.sub(fill, text)


def resolve_path(path: str, base_dir: str | os.PathLike) -> str:
    """`path` made absolute against `base_dir` (after expanding ~); placeholders are kept."""
    expanded = os.path.expanduser(path)
    if os.path.isabs(expanded):
        return os.path.normpath(expanded)
    return os.path.normpath(os.path.join(os.fspath(Path(base_dir).resolve()), expanded))
