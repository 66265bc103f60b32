"""A warm pool of worker processes that fills one-time pads from DRBG states into shared memory.

HMAC_DRBG runs in pure Python at a few tens of MB/s and `hashlib` holds the GIL for inputs this
small (64 bytes), so pads for different peers are generated in processes, not threads.

Design choices:
- Workers are plain subprocesses (`python -m xfed.crypto.pad_worker_main`), not multiprocessing
  children: nothing is forked from a caller that holds threads (torch, redis), the caller's
  `__main__` is never re-imported, and nothing is pickled. Parent and workers talk in JSON lines
  over pipes: a task is a DRBG state (a few bytes), a buffer and a word range; the reply is the
  state the DRBG reached, which the caller's DRBG adopts.
- The pad buffer is a Linux memfd (the worker opens /proc/<pid>/fd/<fd>; the memory goes away
  with the parent, whatever way it ends), or a temporary file elsewhere. It grows on demand and
  is reused, so after the first round its pages are warm.
- A worker exits when its stdin closes, so workers never outlive the parent.
Every wait has a timeout; a dead or hung worker fails the call and the pool is rebuilt next time.
"""

from __future__ import annotations

import atexit
import json
import mmap
import os
import pathlib
import selectors
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import numpy as np

from xfed.crypto.drbg import CtrDrbg, HmacDrbg

__all__ = ["PadWorkers", "get_pad_workers", "shutdown_pad_workers", "available_cores", "encode_state", "decode_state"]


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def encode_state(drbg: HmacDrbg | CtrDrbg) -> dict:
    """A DRBG's working state as JSON-able data."""
    if isinstance(drbg, HmacDrbg):
        name, key, v, counter = drbg.export_state()
        return {"kind": "hmac", "hash": name, "key": key.hex(), "v": v.hex(), "counter": counter}
    key, v, counter, df = drbg.export_state()
    return {"kind": "ctr", "key": key.hex(), "v": format(v, "x"), "counter": counter, "df": bool(df)}


def decode_state(data: dict) -> HmacDrbg | CtrDrbg:
    """Inverse of encode_state: a DRBG continuing from that state."""
    if data["kind"] == "hmac":
        return HmacDrbg.from_state(
            (str(data["hash"]), bytes.fromhex(data["key"]), bytes.fromhex(data["v"]), int(data["counter"]))
        )
    if data["kind"] == "ctr":
        return CtrDrbg.from_state((bytes.fromhex(data["key"]), int(data["v"], 16), int(data["counter"]), bool(data["df"])))
    raise ValueError(f"unknown DRBG kind {data.get('kind')!r}")


class _SharedBuffer:
    """Memory the parent and its workers map at the same time; `path` is how a worker opens it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._file: str | None = None
        if hasattr(os, "memfd_create") and os.path.isdir(f"/proc/{os.getpid()}/fd"):
            self._fd = os.memfd_create("xfed-pads")
            self.path = f"/proc/{os.getpid()}/fd/{self._fd}"
        else:
            self._fd, self._file = tempfile.mkstemp(prefix="xfed-pads-")
            self.path = self._file
        os.ftruncate(self._fd, size)
        self.map = mmap.mmap(self._fd, size)

    def words(self, n_words: int) -> np.ndarray:
        return np.ndarray((n_words,), dtype=np.uint64, buffer=self.map)

    def close(self) -> None:
        try:
            self.map.close()
        except BufferError:  # a caller still holds a view; the mapping goes when that view goes
            pass
        os.close(self._fd)
        if self._file:
            pathlib.Path(self._file).unlink(missing_ok=True)


class _Worker:
    def __init__(self) -> None:
        env = dict(os.environ)
        root = str(pathlib.Path(__file__).resolve().parents[2])  # so the worker imports this very xfed
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["OMP_NUM_THREADS"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xfed.crypto.pad_worker_main"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )

    def send(self, message: dict) -> None:
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self, kill: bool = False) -> None:
        if kill and self.proc.poll() is None:
            self.proc.kill()  # our own child, by its handle: it may be busy with an abandoned task
            self.proc.wait(timeout=5)
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # the worker exits at end of input
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


class PadWorkers:
    """`n_workers` worker processes and one shared pad buffer that grows and is reused."""

    def __init__(self, n_workers: int) -> None:
        self.n_workers = max(1, int(n_workers))
        self.owner_pid = os.getpid()  # a forked child must not use (or stop) its parent's workers
        self.broken = False
        self._workers = [_Worker() for _ in range(self.n_workers)]
        self._buffer: _SharedBuffer | None = None
        self._lock = threading.Lock()

    def warm_up(self, timeout: float = 120.0) -> None:
        """Wait until every worker has imported its modules and answers."""
        with self._lock:
            # n messages for n idle workers: the first dispatch pass gives each worker one.
            self._run([{"op": "ping"} for _ in self._workers], timeout)

    def buffer(self, n_words: int) -> np.ndarray:
        """A uint64 view of n_words words of the shared buffer (contents unspecified)."""
        need = max(mmap.PAGESIZE, n_words * 8)
        if self._buffer is None or self._buffer.size < need:
            if self._buffer is not None:
                self._buffer.close()
            self._buffer = _SharedBuffer(need)
        return self._buffer.words(n_words)

    def fill(
        self,
        tasks: list[tuple[HmacDrbg | CtrDrbg, int, int]],
        total_words: int,
        timeout: float,
        on_done: Callable[[int, np.ndarray], None] | None = None,
    ) -> np.ndarray:
        """Fill pads for (drbg, word_offset, n_words) tasks; each drbg adopts the state it reached.

        Returns the buffer view of total_words words. `on_done(task_index, buffer)` runs in this
        thread as each task's words arrive (after idle workers got new tasks), so the caller can
        use finished pads while the rest are generated. TimeoutError after `timeout` seconds,
        RuntimeError if a worker dies; either way no drbg has advanced.
        """
        with self._lock:
            out = self.buffer(total_words)
            messages = [
                {"op": "fill", "path": self._buffer.path, "size": self._buffer.size, "state": encode_state(drbg),
                 "offset": int(offset), "count": int(count)}
                for drbg, offset, count in tasks
            ]
            replies = self._run(messages, timeout, None if on_done is None else (lambda i: on_done(i, out)))
            try:
                states = [decode_state(reply["state"]).export_state() for reply in replies]
            except (KeyError, TypeError, ValueError) as exc:
                self.broken = True
                raise RuntimeError(f"pad worker sent a malformed state: {exc}") from None
            for (drbg, _offset, _count), state in zip(tasks, states, strict=True):
                drbg.import_state(state)  # all or nothing: decoded before any drbg moves
            return out

    def _run(self, messages: list[dict], timeout: float, on_done: Callable[[int], None] | None = None) -> list[dict]:
        """Send messages to idle workers (longest task first), collect the replies in message order."""
        if self.broken:
            raise RuntimeError("pad worker pool is broken; create a new one")
        order = sorted(range(len(messages)), key=lambda i: -messages[i].get("count", 0))
        replies: list[dict | None] = [None] * len(messages)
        deadline = time.monotonic() + timeout
        busy: dict[int, int] = {}  # worker index -> message index
        pending = list(order)

        def dispatch() -> None:
            for w in range(len(self._workers)):
                if pending and w not in busy:
                    i = pending.pop(0)
                    self._workers[w].send(messages[i])
                    busy[w] = i

        sel = selectors.DefaultSelector()
        try:
            for w, worker in enumerate(self._workers):
                sel.register(worker.proc.stdout, selectors.EVENT_READ, w)
            while pending or busy:
                dispatch()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"pad generation did not finish within {timeout:.0f} s")
                finished = []
                for key, _ in sel.select(timeout=min(left, 1.0)):
                    w = key.data
                    line = self._workers[w].proc.stdout.readline()
                    if not line:
                        raise RuntimeError(f"pad worker process {self._workers[w].proc.pid} died")
                    reply = json.loads(line)
                    if not reply.get("ok"):
                        raise RuntimeError(f"pad worker failed: {reply.get('error', 'unknown error')}")
                    i = busy.pop(w)
                    replies[i] = reply
                    finished.append(i)
                if on_done is not None and finished:
                    dispatch()  # keep the workers busy while the caller uses what arrived
                    for i in finished:
                        on_done(i)
        except BaseException:
            self.broken = True  # a worker may still be writing into the buffer: never reuse this pool
            raise
        finally:
            sel.close()
        return replies  # type: ignore[return-value]

    def shutdown(self) -> None:
        for worker in self._workers:
            worker.stop(kill=self.broken)
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None


_pool: PadWorkers | None = None
_pool_lock = threading.Lock()


def get_pad_workers(n_workers: int | None = None) -> PadWorkers:
    """The process-wide pool (created, or re-created with another size or after a failure, on demand)."""
    global _pool
    n = available_cores() if n_workers is None else max(1, int(n_workers))
    with _pool_lock:
        if _pool is not None and _pool.owner_pid != os.getpid():
            _pool = None  # inherited through fork: the workers belong to the parent
        if _pool is not None and (_pool.n_workers != n or _pool.broken):
            _pool.shutdown()
            _pool = None
        if _pool is None:
            _pool = PadWorkers(n)
        return _pool


def shutdown_pad_workers() -> None:
    """Stop the worker processes and free the shared buffer (also runs at interpreter exit)."""
    global _pool
    with _pool_lock:
        if _pool is not None and _pool.owner_pid == os.getpid():
            _pool.shutdown()
        _pool = None


atexit.register(shutdown_pad_workers)
