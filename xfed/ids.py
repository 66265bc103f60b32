"""The one id pattern: node ids, job ids and request ids end up in Redis key names and file paths."""
from __future__ import annotations

import re

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ID_RE = re.compile(ID_PATTERN)
ID_RULE = "1-64 letters, digits, '_', '.', '-' starting with a letter or digit"


def is_id(value: object) -> bool:
    return isinstance(value, str) and ID_RE.match(value) is not None
