"""JSON files that hold one growing list, rewritten every round without re-encoding the whole list.

metrics.json (its `rounds`) and trainer_state.json (its `log_history`) are rewritten atomically after
every round, so that a kill leaves a complete file. Encoding the whole list each time made a round's
bookkeeping grow with the rounds done: at round 2000 of a small-model job a party spent ~0.8 s of a
~1.1 s round there (py-spy, issue 18 session 8), so a job's time grew with the square of its rounds.
Here each entry is encoded once and the file is assembled from the cached texts, byte for byte what
`json.dumps(..., indent=2, sort_keys=True)` of the whole object gives.
"""
from __future__ import annotations

import dataclasses
import json
import os
import secrets
from pathlib import Path
from typing import Any

# stands in for the list in the encoded head; random, so no real value can be mistaken for it
_MARKER = json.dumps(f"xfed-list-{secrets.token_hex(16)}")


class EncodedList:
    """The JSON texts of a list's entries, each encoded once.

    The owners of these lists append fresh dicts and never edit one (the Trainer's `log`, our round
    records), so an entry's text stays valid. A list that is replaced, shortened or whose kept entries
    are not the same objects any more (a resumed state, a reloaded metrics file) is encoded afresh.
    """

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._texts: list[str] = []

    def texts(self, items: list[Any]) -> list[str]:
        kept = len(self._items)
        if len(items) < kept or any(a is not b for a, b in zip(items[:kept], self._items, strict=True)):
            self._items, self._texts = [], []
        for item in items[len(self._items):]:
            # an entry sits two levels deep (object -> list -> entry): indent=2 puts it at 4 spaces
            self._texts.append("    " + json.dumps(item, indent=2, sort_keys=True).replace("\n", "\n    "))
            self._items.append(item)
        return self._texts


def dumps(head: dict[str, Any], key: str, texts: list[str]) -> str:
    """`json.dumps({**head, key: <the list>}, indent=2, sort_keys=True)`, the list given as its entries' texts."""
    body = "[\n" + ",\n".join(texts) + "\n  ]" if texts else "[]"
    return json.dumps({**head, key: json.loads(_MARKER)}, indent=2, sort_keys=True).replace(_MARKER, body, 1)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# One cache for the process: a party has one TrainerState, written both to its output folder and to
# the round's resume state. Another state (or a reloaded one) only costs a fresh encoding.
_LOG_HISTORY = EncodedList()


def trainer_state_text(state: Any) -> str:
    """What `TrainerState.save_to_json` writes, with `log_history` encoded incrementally."""
    head = {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if f.name != "log_history"}
    return dumps(head, "log_history", _LOG_HISTORY.texts(state.log_history)) + "\n"


def save_trainer_state(state: Any, path: Path) -> None:
    write_atomic(Path(path), trainer_state_text(state))
