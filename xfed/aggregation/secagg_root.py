"""The root (assist trainer) of dropout-tolerant secure aggregation: wait, ask, reconstruct, unmask.

See xfed/aggregation/secagg.py for the protocol and docs/SECAGG.md §6 for the derivation.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np

from xfed.aggregation.base import RootBase, as_numpy, check_weight, tag_down, tag_up
from xfed.aggregation.context import AggregationContext
from xfed.aggregation.secagg import _SecAgg, epoch_session, split_words, tag_ask, tag_reveal
from xfed.aggregation.secagg_join import TAG_JOIN, TAG_WELCOME, check_join
from xfed.aggregation.secagg_keys import reconstruct_key, reconstruct_seed, round_session
from xfed.aggregation.secagg_sum import SecAggUploads
from xfed.aggregation.secagg_sum import survivors as survivors_of
from xfed.aggregation.settings import Otp
from xfed.crypto import pad_stream, shared_secret, validate_public
from xfed.crypto.otp import add_pads
from xfed.crypto.selfmask import SELF_PEER, self_mask_stream
from xfed.crypto.shamir import decode_share
from xfed.errors import FrameError, JobError, SecurityError


def _of_round_up_to(tag: str, round_idx: int) -> bool:
    """Whether `tag` is a per-round tag (`agg/R/up`, `sa/R/keys`, `sa/R/reveal`...) of a round R <= round_idx."""
    parts = tag.split("/")
    return len(parts) == 3 and parts[0] in ("agg", "sa") and parts[1].isdigit() and int(parts[1]) <= round_idx


class SecAggRoot(_SecAgg, RootBase):
    def __init__(self, ctx: AggregationContext, otp: Otp, *, min_parties: int | None = None,
                 **kw: Any) -> None:
        super().__init__(ctx, **kw)
        self._configure(otp, min_parties)
        self.last_contributors: list[str] = []
        self.last_dropped: list[str] = []
        self.last_removed: list[str] = []  # summed, then left out (one-sided pairing): subtracted again
        self.last_spilled_bytes = 0
        self._uploaded: set[str] = set()  # whose upload of this round was read (they read the last mean)
        self._unread: set[str] = set()  # readers of the current published mean not known to have read it
        self.incarnations: dict[str, int] = {}  # admitted rejoiners' incarnations (0: never restarted)
        self.listening: dict[str, int] = {}     # restarted, not admitted yet: whose join we read
        self.last_joined: dict[str, int] = {}
        self.discarded = 0  # messages that came after their round and were dropped unread

    def setup(self) -> None:
        """Tell the scheduler (through the job's events) that this stage tolerates dropouts, and whether
        a restarted trainer may rejoin (only when the operator said which round is the last)."""
        self.ctx.report("metrics", {"secagg": {"threshold": self.t, "min_parties": self.floor,
                                               "trainers": self.trainers, "round_timeout_s": self.wait_s,
                                               "rejoin": self.last_round is not None}})

    def aggregate(self, round_idx: int, own_tensors: Mapping[str, Any] | None,
                  own_weight: float = 0.0) -> dict[str, np.ndarray]:
        st = self._begin(round_idx)
        who = f"{self.node_id}: round {round_idx}"
        own = as_numpy(own_tensors, who) if own_tensors is not None else None
        own_w = check_weight(own_weight, who, allow_zero=True)
        with SecAggUploads(self, round_idx) as uploads:
            busy = self._gather_uploads(round_idx, uploads)
            t0 = time.perf_counter()
            paired = uploads.paired
            survivors = survivors_of(paired)  # pairings made symmetric (a one-sided pair drops its laggard)
            dropped = [n for n in self.trainers if n not in survivors]
            if len(survivors) < self.floor:
                raise JobError(f"round {round_idx}: only {len(survivors)} of {len(self.trainers)} label trainers "
                               f"uploaded within {self.wait_s:g} s (need {self.floor}); dropped: {', '.join(dropped)}")
            self.comm.broadcast(survivors, tag_ask(round_idx), meta={"survivors": survivors, "dropped": dropped})
            for node in uploads.summed():  # summed, then left out (one-sided pairing): taken out again,
                if node not in survivors:  # while the survivors prepare their answers
                    uploads.remove(node)
            # t answers suffice (Shamir): a survivor that dies now still has its upload unmasked by the others
            reveals = self.comm.gather_until(survivors, tag_reveal(round_idx), self.wait_s)
            if len(reveals) < self.t:
                silent = [n for n in survivors if n not in reveals]
                raise JobError(f"round {round_idx}: only {len(reveals)} survivors sent their shares within "
                               f"{self.wait_s:g} s (need {self.t}); silent: {', '.join(silent)}")
            correction = self._correction(round_idx, uploads.metas, survivors, dropped, paired, reveals,
                                          uploads.reference)
            sums, total = uploads.result_with(correction)
            del correction
            st.unmask_ms = round((busy + time.perf_counter() - t0) * 1000, 3)
            self.last_spilled_bytes, self.last_removed = uploads.spilled_bytes, list(uploads.removed)
            self._uploaded = set(uploads.metas)
        self.last_contributors, self.last_dropped = survivors, dropped
        self.active = set(survivors)
        joined = self._admit(round_idx, survivors)
        mean = self._finish(round_idx, sums, total, own, own_w,
                            meta={"contributors": survivors, "dropped": dropped, "epoch": self.epoch,
                                  "joined": joined})
        st.parties = len(survivors) + (1 if own is not None and own_w > 0 else 0)
        self.ctx.report("metrics", {"secagg": {"round": round_idx, "contributors": survivors, "dropped": dropped}})
        if joined:  # the scheduler waits for them from now on (xfed.scheduler.rejoins)
            self.ctx.report("metrics", {"secagg": {"joined": self.last_joined, "from_round": round_idx + 1,
                                                   "epoch": self.epoch}})
        # what came too late for its round (a straggler's upload, keys or shares) is never asked for
        self.discarded += self.comm.discard(lambda tag: _of_round_up_to(tag, round_idx))
        self._end()
        return mean

    def _send_mean(self, round_idx: int, mean: dict[str, np.ndarray], meta: Mapping[str, Any] | None) -> None:
        """One copy of the mean for the round's contributors (`Comm.publish`), a copy of its own for
        every other member (dropped, late, left out, just admitted): SECAGG.md §6, "One copy".

        A publish replaces the previous one, whose readers must have read it first. A reader proves
        it by uploading again (a leaf reads round r's mean before it uploads for r + 1). While one
        has not (dead, or stalled between its upload and the mean), the mean goes as a copy to
        everyone and the previous publish stays readable, however long that lasts: a straggler
        always catches up, as it did when every round went as copies. A reader that restarted (a
        new incarnation, `_admit`) reads new mailboxes and no longer holds the publish back."""
        self._unread -= self._uploaded
        tag = tag_down(round_idx)
        if self._unread:
            self.comm.broadcast(self.trainers, tag, mean, meta)
            return
        contributors = set((meta or {}).get("contributors") or ())
        shared = [n for n in self.trainers if n in contributors]
        own_copy = [n for n in self.trainers if n not in contributors]
        if shared:
            self.comm.publish(shared, tag, mean, meta)
            self._unread = set(shared)
        if own_copy:
            self.comm.broadcast(own_copy, tag, mean, meta)

    def _admit(self, round_idx: int, survivors: list[str]) -> dict[str, dict[str, Any]]:
        """Rejoiners (the scheduler's membership record) whose join request is here, admitted from the
        next round on: new epoch, welcome + this round's mean to them, `joined` to everyone (SECAGG.md §7)."""
        self.last_joined = {}
        record = self.ctx.membership()
        for node, k in sorted(record.items()):
            if node in self.index and k > self.incarnations.get(node, 0) and self.listening.get(node) != k:
                self.comm.set_incarnation(node, k, outbound=False)  # its join comes on the new mailboxes
                self.listening[node] = k
                self._unread.discard(node)  # its old incarnation is gone: it will not read the publish
        if not self.listening or self.last_round is None or round_idx >= self.last_round:
            return {}  # no round left to join (or an operator that does not say how many there are)
        joined: dict[str, dict[str, Any]] = {}
        for node, k in sorted(self.listening.items()):
            got = self.comm.gather_until([node], TAG_JOIN, 0)
            if node not in got:
                continue
            try:
                joined[node] = check_join(got[node].meta, node=node, incarnation=k, group=self.group)
            except (FrameError, SecurityError) as exc:
                self.warn(f"round {round_idx}: join request of {node} refused: {exc}")
        if not joined:
            return {}
        self.epoch += 1
        self.session = epoch_session(self.ctx, self.epoch)
        for node, entry in joined.items():
            self.incarnations[node] = entry["incarnation"]
            self.listening.pop(node)
            self.comm.set_incarnation(node, entry["incarnation"])
        welcome = {"round": round_idx + 1, "epoch": self.epoch, "incarnations": dict(self.incarnations),
                   "contributors": survivors, "joined": joined}
        self.comm.broadcast(sorted(joined), TAG_WELCOME, meta=welcome)
        self.last_joined = {n: e["incarnation"] for n, e in joined.items()}
        return joined

    def _gather_uploads(self, round_idx: int, uploads: SecAggUploads) -> float:
        """Add each upload into `uploads` as it arrives: wait for the first one (the Comm's timeout:
        local steps take what they take), then up to round_timeout_s for the parties of the last
        round and a grace for the others. One upload is read at a time (the rest waits in Redis).
        Returns the seconds spent adding (the rest was waiting)."""
        tag = tag_up(round_idx)
        limit = self.comm.timeout if self.timeout is None else float(self.timeout)
        deadline = time.monotonic() + limit
        busy = 0.0

        def take(peers: list[str], wait_s: float) -> None:
            nonlocal busy
            for node, msg in self.comm.arrivals(peers, tag, wait_s, partial=True, one_by_one=True):
                t0 = time.perf_counter()
                uploads.add(node, msg.tensors, msg.meta)
                del msg  # the next upload is read without this one in memory
                busy += time.perf_counter() - t0

        while not uploads.metas:
            left = deadline - time.monotonic()
            if left <= 0:
                raise JobError(f"round {round_idx}: no label trainer uploaded within {limit:g} s")
            take(self.trainers, min(0.2, left))
        take([n for n in self.trainers if n in self.active and n not in uploads.metas], self.wait_s)
        others = [n for n in self.trainers if n not in uploads.metas and n not in self.active]
        if others:
            take(others, self.grace_s)
        return busy

    def _correction(self, round_idx: int, metas: Mapping[str, Mapping[str, Any]], survivors: list[str],
                    dropped: list[str],
                    paired: dict[str, set[str]], reveals: Mapping[str, Any], reference: Mapping[str, np.ndarray],
                    ) -> dict[str, np.ndarray]:
        """-Σ self-masks of the survivors - Σ pads between survivors and dropped parties, as an upload."""
        rs, s = round_session(self.session, round_idx), self.settings
        seeds: dict[str, list] = {u: [] for u in survivors}
        keys: dict[str, list] = {v: [] for v in dropped}
        publics: dict[str, set[str]] = {v: set() for v in dropped}
        for w, msg in reveals.items():
            x = self.index[w]
            meta = msg.meta
            try:
                for u, hex_share in (meta.get("seeds") or {}).items():
                    if u in seeds:
                        seeds[u].append(decode_share(x, bytes.fromhex(hex_share)))
                for v, hex_share in (meta.get("keys") or {}).items():
                    if v in keys:
                        keys[v].append(decode_share(x, bytes.fromhex(hex_share)))
                for v, hex_public in (meta.get("publics") or {}).items():
                    if v in publics and isinstance(hex_public, str):
                        publics[v].add(hex_public)
            except (ValueError, TypeError, AttributeError) as exc:
                raise FrameError(f"round {round_idx} shares from {w}: malformed ({exc})") from None
        self_streams = {}
        for u in survivors:
            commit = metas[u].get("commit")
            seed = reconstruct_seed(u, seeds[u], self.t, commit=str(commit), session=rs)
            self_streams[u] = self_mask_stream(seed, csprng=s.csprng, method=s.method, session=rs, owner=u,
                                               lanes=s.lanes)
        flat = np.zeros(sum(int(a.size) for a in reference.values()), dtype=np.uint64)
        add_pads(flat, bits=s.bits, self_id=SELF_PEER, peer_streams=self_streams)
        for v in dropped:
            partners = [u for u in survivors if v in paired[u]]
            if not partners:
                continue
            if len(publics[v]) != 1:
                raise JobError(f"round {round_idx}: survivors disagree on the mask public value of {v} "
                               f"(or none sent it)")
            public = int(publics[v].pop(), 16)
            private = reconstruct_key(v, keys[v], self.t, group=self.group, public=public)
            streams = {}
            for u in partners:
                try:
                    pu = int(str(metas[u].get("public")), 16)
                    validate_public(self.group, pu)
                except ValueError as exc:
                    raise FrameError(f"round {round_idx} upload from {u}: bad mask public value ({exc})") from None
                streams[u] = pad_stream(shared_secret(self.group, private, pu), csprng=s.csprng, method=s.method,
                                        session=rs, node_a=v, node_b=u, lanes=s.lanes)
            add_pads(flat, bits=s.bits, self_id=v, peer_streams=streams)
        return split_words(flat, reference)
