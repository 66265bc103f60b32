"""How a metric value reads in a table: the client's round table and an operator's report agree."""
from __future__ import annotations

from typing import Any


def cell(value: Any) -> str:
    """'-' for a missing value, a float to 4 significant digits, anything else as str()."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
