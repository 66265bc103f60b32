"""Entry point of a pad worker process: JSON-line tasks on stdin, JSON-line replies on stdout.

Started only by `xfed.crypto.pad_workers`; each "fill" task names a shared buffer, a DRBG state
and a word range; the worker writes the pad words there and replies with the state it reached.
It exits when stdin closes (its parent went away or shut the pool down).
"""

from __future__ import annotations

import json
import mmap
import os
import sys

import numpy as np

from xfed.crypto.pad_workers import decode_state, encode_state


class _Mapping:
    """The parent's shared buffer, mapped once and kept while the parent keeps using it."""

    def __init__(self) -> None:
        self.key: tuple[str, int] | None = None
        self.map: mmap.mmap | None = None

    def get(self, path: str, size: int) -> mmap.mmap:
        if self.key != (path, size):
            if self.map is not None:
                self.map.close()
            fd = os.open(path, os.O_RDWR)
            try:
                self.map = mmap.mmap(fd, size)
            finally:
                os.close(fd)
            self.key = (path, size)
        return self.map


def _handle(task: dict, mapping: _Mapping) -> dict:
    if task.get("op") == "ping":
        return {"ok": True, "pid": os.getpid()}
    if task.get("op") != "fill":
        raise ValueError(f"unknown op {task.get('op')!r}")
    offset, count, size = int(task["offset"]), int(task["count"]), int(task["size"])
    if offset < 0 or count < 0 or (offset + count) * 8 > size:
        raise ValueError("task range lies outside the shared buffer")
    drbg = decode_state(task["state"])
    buf = mapping.get(str(task["path"]), size)
    words = np.ndarray((count,), dtype=np.uint64, buffer=buf, offset=offset * 8)
    drbg.fill(words)
    del words
    return {"ok": True, "state": encode_state(drbg)}


def main() -> int:
    mapping = _Mapping()
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        try:
            reply = _handle(json.loads(line), mapping)
        except Exception as exc:  # reported to the parent, which fails the round with it
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply).encode() + b"\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
