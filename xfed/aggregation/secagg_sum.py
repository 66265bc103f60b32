"""The SecAgg root's running sum of one round's double-masked uploads (docs/SECAGG.md §6, "Root").

Each upload is added into a running sum mod 2^bits as it arrives and dropped, as the plain and otp
roots do (`MaskedUploads`), so the root holds about two adapters (the sum and the upload in hand)
whatever the number of parties, and sums while later uploads are still on the wire. What a
dropout-tolerant round adds: an upload already summed may have to come out again, when the root
leaves out the party in the most one-sided pairings (`survivors`), which it can only decide once
every upload is in. Such an upload is subtracted again (mod 2^bits: exact, so the sum is bit for
bit that of the survivors' uploads alone) after being re-read from a *spill file*:

Why a spill file and not the Redis stream entry. The broker deletes an entry it has consumed with
the Comm's next command (a deferred XDEL, `xfed.broker.receiving`); keeping entries until the
round's survivors are known would make the broker's deletion schedule, which WAN rounds tune, part
of this protocol, hold N uploads in Redis, and need the entry re-assembled and its signature checked
again. The spill file is the root's own: every upload's words are appended as they are summed (a
sequential write into the page cache: a few times the add's cost, small beside reading the upload
from Redis), and read back, one upload at a time, only for a party that is left out after summing
(rare: a late rejoiner's keys). It is an unnamed file (`tempfile.TemporaryFile`: O_TMPFILE, or unlinked at creation; mode 0600) in the
temp directory (`TMPDIR`), so nothing of it outlives the round or the process; it holds only what
the root already received, masked uploads whose self-masks hide them (SECAGG.md §6).
"""

from __future__ import annotations

import tempfile
from typing import Any, Mapping

import numpy as np

from xfed.aggregation.base import WEIGHT_KEY
from xfed.aggregation.otp import MaskedUploads
from xfed.aggregation.secagg import split_words
from xfed.errors import FrameError, JobError, blaming


def survivors(paired: Mapping[str, set[str]]) -> list[str]:
    """The uploads' parties whose pairings are symmetric, leaving out one-sided ones one at a time.

    w in P_u, u not in P_w: u's keys came late to w (u is late, or w stopped waiting). The party in
    the most one-sided pairs goes first, the late one on a tie: one late party (a rejoiner whose
    keys reached nobody in time) must not cost the round all the others."""
    alive = set(paired)
    while True:
        lopsided = [(u, w) for u in alive for w in alive if w in paired[u] and u not in paired[w]]
        if not lopsided:
            return sorted(alive)
        score: dict[str, tuple[int, int]] = {}
        for u, w in lopsided:
            n, late = score.get(u, (0, 0))
            score[u] = (n + 1, late + 1)
            n, late = score.get(w, (0, 0))
            score[w] = (n + 1, late)
        alive.discard(max(sorted(score), key=lambda node: score[node]))


class SecAggUploads(MaskedUploads):
    """One round's masked uploads: summed as they arrive, spilled so that one can be taken out again.

    `metas` keeps what the later steps need of each upload (its pairing set, mask public value and
    seed commitment: a few hundred bytes), never its tensors. Use as a context manager: the spill
    file is closed (and its space freed) when the round ends, however it ends."""

    def __init__(self, root: Any, round_idx: int) -> None:
        super().__init__(root, round_idx)
        self.trainers = set(root.trainers)
        self.metas: dict[str, dict[str, Any]] = {}
        self._spill = tempfile.TemporaryFile(prefix="xfed-secagg-")
        self._at: dict[str, int] = {}  # node -> offset of its words in the spill file
        self._end = 0
        self.spilled_bytes = 0
        self.removed: list[str] = []

    def __enter__(self) -> SecAggUploads:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._spill.close()

    @property
    def paired(self) -> dict[str, set[str]]:
        return {node: meta["paired"] for node, meta in self.metas.items()}

    def add(self, node: str, tensors: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> None:
        """Check `node`'s upload (layout, pairing list; FrameError blaming it), add it, spill its words."""
        p = (meta or {}).get("paired")
        if not isinstance(p, list) or not all(isinstance(x, str) for x in p) or not set(p) <= self.trainers - {node}:
            raise blaming(FrameError(f"round {self.round_idx} upload from {node}: malformed pairing list"), node)
        if node in self.metas:
            raise blaming(FrameError(f"round {self.round_idx}: a second upload from {node}"), node)
        super().add(node, tensors)  # checked against the layout the root broadcast, then summed
        self._at[node] = self._end
        for name in sorted(self.reference):  # split_words' order: the words as one flat upload
            self._end += self._spill.write(memoryview(np.ascontiguousarray(tensors[name])).cast("B"))
        self.spilled_bytes = self._end
        self.metas[node] = {"paired": set(p), "public": meta.get("public"), "commit": meta.get("commit")}

    def remove(self, node: str) -> None:
        """Take `node`'s upload back out of the sum (re-read from the spill file: one upload in memory)."""
        if node not in self._at or node in self.removed:
            raise JobError(f"round {self.round_idx}: no summed upload of {node} to take out")
        words = np.empty(self.words(), dtype=np.uint64)
        self._spill.seek(self._at[node])
        got = self._spill.readinto(memoryview(words).cast("B"))
        if got != words.nbytes:
            raise JobError(f"round {self.round_idx}: the spill file holds {got} of {words.nbytes} bytes of {node}'s upload")
        self.sum.subtract(split_words(words, self.reference))
        self.removed.append(node)

    def words(self) -> int:
        """uint64 words of one upload (every tensor and the weight, encoded)."""
        return sum(int(np.prod(a.shape)) for a in self.reference.values())

    def summed(self) -> list[str]:
        """The parties whose uploads are in the sum now."""
        return sorted(n for n in self._at if n not in self.removed)

    def result_with(self, correction: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        """Add the correction (self-masks and dropped parties' pads, SECAGG.md §6) and decode.

        The weight's check in `MaskedUploads.result` now also catches a correction that does not
        remove the masks (a random sum)."""
        if WEIGHT_KEY not in correction:
            raise JobError(f"round {self.round_idx}: the correction lacks {WEIGHT_KEY!r}")
        self.sum.add(correction)
        return self.result()
