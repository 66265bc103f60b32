"""A warm pool of worker processes that fills one-time pads from DRBG states into shared memory.

HMAC_DRBG runs in pure Python at a few tens of MB/s and `hashlib` holds the GIL for inputs this
small (64 bytes), so pads for different peers are generated in processes, not threads. A task
carries a DRBG's state (a few bytes) and a slice of one shared-memory buffer; the worker writes
the pad bytes there and returns the state it reached, which the caller adopts. Nothing but our
own DRBG states and buffer offsets crosses the process boundary.

The pool and its buffer are created on first use and kept (warm) for later rounds; processes are
started with "spawn" so a caller holding threads (torch, redis) is never forked.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import threading
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import shared_memory

import numpy as np

from xfed.crypto.drbg import CtrDrbg, HmacDrbg

__all__ = ["PadWorkers", "get_pad_workers", "shutdown_pad_workers", "available_cores"]

_DRBG_KINDS = {"hmac": HmacDrbg, "ctr": CtrDrbg}


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# ---- worker side ----------------------------------------------------------------------------
_attached: dict[str, shared_memory.SharedMemory] = {}


def _attach(name: str) -> shared_memory.SharedMemory:
    shm = _attached.get(name)
    if shm is None:
        for old in _attached.values():  # the parent replaced its buffer: let go of the old one
            old.close()
        _attached.clear()
        shm = shared_memory.SharedMemory(name=name)
        _attached[name] = shm
    return shm


def _fill_task(shm_name: str, kind: str, state: tuple, word_offset: int, n_words: int) -> tuple:
    """Worker: continue the DRBG from `state`, fill n_words pad words at word_offset, return the new state."""
    drbg = _DRBG_KINDS[kind].from_state(state)
    shm = _attach(shm_name)
    words = np.ndarray((n_words,), dtype=np.uint64, buffer=shm.buf, offset=word_offset * 8)
    drbg.fill(words)
    del words  # release the buffer export before the segment may be closed
    return drbg.export_state()


def _noop() -> int:
    return os.getpid()


# ---- parent side ----------------------------------------------------------------------------
class PadWorkers:
    """`n_workers` spawned processes and one shared-memory pad buffer that grows and is reused."""

    def __init__(self, n_workers: int) -> None:
        self.n_workers = int(n_workers)
        self._executor = ProcessPoolExecutor(self.n_workers, mp_context=multiprocessing.get_context("spawn"))
        self._shm: shared_memory.SharedMemory | None = None
        self._lock = threading.Lock()

    def warm_up(self, timeout: float = 120.0) -> None:
        """Start every worker process now (spawning costs a few hundred ms each)."""
        futures = [self._executor.submit(_noop) for _ in range(self.n_workers)]
        done, pending = wait(futures, timeout=timeout)
        if pending:
            raise TimeoutError(f"pad worker processes did not start within {timeout:.0f} s")
        for f in done:
            f.result()

    def buffer(self, n_words: int) -> np.ndarray:
        """A uint64 view of at least n_words words of the shared buffer (contents unspecified)."""
        need = max(8, n_words * 8)
        if self._shm is None or self._shm.size < need:
            self._release_buffer()
            self._shm = shared_memory.SharedMemory(create=True, size=need)
        return np.ndarray((n_words,), dtype=np.uint64, buffer=self._shm.buf)

    def fill(self, tasks: list[tuple[object, int, int]], total_words: int, timeout: float) -> np.ndarray:
        """Fill pads for (drbg, word_offset, n_words) tasks; each drbg adopts the state it reached.

        Returns the buffer view of total_words words. Raises TimeoutError after `timeout` s.
        """
        with self._lock:
            out = self.buffer(total_words)
            name = self._shm.name
            # Longest first: the pool then ends its last tasks close together.
            order = sorted(range(len(tasks)), key=lambda i: -tasks[i][2])
            futures = {}
            try:
                for i in order:
                    drbg, offset, count = tasks[i]
                    kind = "hmac" if isinstance(drbg, HmacDrbg) else "ctr"
                    futures[self._executor.submit(_fill_task, name, kind, drbg.export_state(), offset, count)] = i
                done, pending = wait(futures, timeout=timeout, return_when=FIRST_EXCEPTION)
                if pending:
                    for f in pending:
                        f.cancel()
                    raise TimeoutError(f"pad generation did not finish within {timeout:.0f} s")
                results = {futures[f]: f.result() for f in done}
            except BrokenProcessPool as exc:
                self._broken = True
                raise RuntimeError("a pad worker process died; the pad streams are no longer usable") from exc
            for i, state in results.items():
                tasks[i][0].import_state(state)
            return out

    def _release_buffer(self) -> None:
        if self._shm is not None:
            self._shm.close()
            self._shm.unlink()
            self._shm = None

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._release_buffer()


_pool: PadWorkers | None = None
_pool_lock = threading.Lock()


def get_pad_workers(n_workers: int | None = None) -> PadWorkers:
    """The process-wide pool (created, or re-created with another size, on demand)."""
    global _pool
    n = available_cores() if n_workers is None else max(1, int(n_workers))
    with _pool_lock:
        if _pool is not None and (_pool.n_workers != n or getattr(_pool, "_broken", False)):
            _pool.shutdown()
            _pool = None
        if _pool is None:
            _pool = PadWorkers(n)
        return _pool


def shutdown_pad_workers() -> None:
    """Stop the worker processes and free the shared buffer (also runs at interpreter exit)."""
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.shutdown()
            _pool = None


atexit.register(shutdown_pad_workers)
