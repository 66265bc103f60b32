"""Dropout-tolerant secure aggregation (Bonawitz et al., CCS 2017: double masking, Shamir t-of-n).

Chosen by `encryption.otp.dropout` (xfed.aggregation.dropout); docs/SECAGG.md §6 has the exact
derivation. Per stage the label trainers agree a *channel* DH key per pair (today's exchange),
used only to seal shares. Per round r each trainer u draws a fresh mask key s_u and self-mask seed
b_u, sends every peer its public value and sealed Shamir shares of both (secagg_keys), and uploads

    y_u = encode(w_u·x_u, w_u) + PRG(b_u) + Σ_{v paired} ±PRG(DH(s_u, s_v))   (mod 2^bits)

The root waits for every upload or `round_timeout_s`; with survivors U (|U| >= t) it asks each
survivor for its shares of b_u (u in U) and of s_v (v dropped), reconstructs them (each checked
against a commitment), subtracts the survivors' self-masks and the dropped parties' pads with
survivors, and decodes Σ_U w_u·x_u and Σ_U w_u. A late upload is never read: its self-mask is
never revealed. Keys are fresh per round, so a revealed s_v unmasks nothing of another round, and
a party that was late in round r takes part again in round r+1. A restarted party rejoins as a new
incarnation at a round boundary, opening the next membership epoch (secagg_join, SECAGG.md §7).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from xfed.aggregation.base import (
    LeafBase,
    as_numpy,
    check_same_layout,
    check_weight,
    encode,
    tag_down,
    tag_up,
)
from xfed.aggregation.context import AggregationContext
from xfed.aggregation.dropout import check_membership
from xfed.aggregation.keyexchange import OtpSettings, exchange_publics
from xfed.aggregation.secagg_join import (
    TAG_CHAN,
    TAG_JOIN,
    TAG_WELCOME,
    chan_message,
    join_message,
    join_session,
    joiner_public,
    open_chan,
    pair_share_key,
    parse_welcome,
)
from xfed.aggregation.secagg_keys import (
    HeldShares,
    Ledger,
    OwnRound,
    indices,
    keys_message,
    open_keys_message,
    round_session,
)
from xfed.aggregation.settings import Otp
from xfed.crypto import generate_keypair, named_group, pad_stream, shared_secret
from xfed.crypto.fixedpoint import add_into, words_per_element
from xfed.crypto.otp import add_pads
from xfed.crypto.pads import PadStream
from xfed.crypto.selfmask import SELF_PEER, self_mask_stream
from xfed.crypto.shamir import encode_share, share_key
from xfed.errors import FrameError, JobError, SecurityError


def tag_keys(r: int) -> str:
    return f"sa/{int(r)}/keys"


def tag_ask(r: int) -> str:
    return f"sa/{int(r)}/ask"


def tag_reveal(r: int) -> str:
    return f"sa/{int(r)}/reveal"


def epoch_session(ctx: AggregationContext, epoch: int = 0) -> str:
    """E: membership epoch 0 per stage attempt, the next one at every round boundary where nodes rejoined."""
    return f"{ctx.job_id}/{ctx.stage_id}/{ctx.attempt}/e{int(epoch)}"


def n_words(layout: Mapping[str, Any], bits: int) -> int:
    """Words of one upload: every tensor plus the scalar weight."""
    return (sum(int(np.prod(np.shape(a))) for a in layout.values()) + 1) * words_per_element(bits)


def split_words(flat: np.ndarray, like: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Views of `flat` shaped like the (encoded) arrays of `like`, in sorted-name order (mask's layout)."""
    out, off = {}, 0
    for name in sorted(like):
        shape = like[name].shape
        size = int(np.prod(shape))
        out[name] = flat[off:off + size].reshape(shape)
        off += size
    if off != flat.size:
        raise JobError(f"pad of {flat.size} words does not match an upload of {off}")
    return out


@dataclass
class Prepared:
    """One round's keys on a leaf: what it drew, what it holds for its peers, and (maybe) its pad."""

    own: OwnRound
    held: dict[str, HeldShares]
    streams: dict[str, PadStream]
    pad: np.ndarray | None = None


def _identities(ctx: AggregationContext) -> dict[str, str]:
    return dict(ctx.fed.identities) if ctx.fed is not None else {}


class _SecAgg:
    def _configure(self, otp: Otp, min_parties: int | None) -> None:
        self.settings = OtpSettings.of(otp)
        self.dropout = otp.dropout
        if self.dropout is None:
            raise JobError("secure aggregation with dropouts needs encryption.otp.dropout")
        self.floor = check_membership(self.dropout, len(self.trainers), min_parties)
        self.t = self.dropout.threshold
        self.wait_s = self.dropout.round_timeout_s
        self.group = named_group(self.settings.group_bits)
        self.index = indices(self.trainers)
        self.epoch = 0
        self.session = epoch_session(self.ctx, 0)
        self.active = set(self.trainers)  # who took part last round: waited for in full
        # how long a party that missed the last round is waited for once the others are in
        self.grace_s = min(self.wait_s, max(1.0, self.wait_s / 10))
        # the stage's last round (set by the operator): the root admits a rejoiner only while one is left
        self.last_round: int | None = None


class SecAggLeaf(_SecAgg, LeafBase):
    def __init__(self, ctx: AggregationContext, otp: Otp, *, min_parties: int | None = None,
                 **kw: Any) -> None:
        super().__init__(ctx, **kw)
        self._configure(otp, min_parties)
        self.peers = [t for t in self.trainers if t != self.node_id]
        self.share_keys: dict[str, bytes] = {}
        self.ledger = Ledger()
        self.last_contributors: list[str] = []
        self._prepared: dict[int, Prepared] = {}
        self._thread: tuple[int, threading.Thread, list] | None = None
        self.setup_ms = 0.0
        self.incarnation = ctx.incarnation  # > 0: restarted into the running stage
        self.start_round = 0  # a rejoiner's first round (from the root's welcome)
        self._ready = False
        self._join_key: tuple[int, int] | None = None

    def setup(self) -> None:
        """Channel DH with every peer (fresh per stage attempt): the keys that seal shares. A rejoiner
        instead asks the root to be admitted (receive_initial waits for the answer)."""
        t0 = time.perf_counter()
        if self.node_id not in self.trainers:
            raise JobError(f"{self.node_id} is not a label trainer of this job")
        if self.incarnation:
            self._send_join()
            self.setup_ms = round((time.perf_counter() - t0) * 1000, 3)
            return
        private, public = generate_keypair(self.group, optimized=self.settings.optimized)
        publics = exchange_publics(self.comm, self.peers, session=self.session, group=self.group, public=public,
                                   identity_key=self.ctx.identity_key,
                                   identities=_identities(self.ctx), timeout=self.timeout)
        self.share_keys = {p: share_key(shared_secret(self.group, private, y), session=self.session,
                                        node_a=self.node_id, node_b=p) for p, y in publics.items()}
        self._ready = True
        self.setup_ms = round((time.perf_counter() - t0) * 1000, 3)

    def receive_initial(self) -> dict[str, np.ndarray]:
        """The initial tensors; for a rejoiner the mean of the round before `start_round` (the global
        model the others hold) once the root admitted it."""
        initial = self._receive_welcome() if self.incarnation else super().receive_initial()
        if self.dropout.precompute_pads:
            self.prepare_async(self.start_round)
        return initial

    # -- rejoin (secagg_join; SECAGG.md §7) --------------------------------------------------------
    def _send_join(self) -> None:
        private, public = generate_keypair(self.group, optimized=self.settings.optimized)
        self._join_key = (private, public)
        session = join_session(self.ctx, self.node_id, self.incarnation)
        self.comm.send(self.assist_id, TAG_JOIN, meta=join_message(
            node=self.node_id, incarnation=self.incarnation, peers=self.peers, session=session, group=self.group,
            public=public, identity_key=self.ctx.identity_key))

    def _receive_welcome(self) -> dict[str, np.ndarray]:
        """Wait until the root admits this node (the Comm's timeout; the job's end stops the wait)."""
        me, pinned = self.node_id, _identities(self.ctx)
        welcome = self.comm.recv(self.assist_id, TAG_WELCOME, timeout=self.timeout)
        first, epoch, incarnations, contributors, joined = parse_welcome(welcome.meta, members=self.trainers,
                                                                         root=self.assist_id)
        for node, k in incarnations.items():
            if node != me:
                self.comm.set_incarnation(node, k)
        mean = self.comm.recv(self.assist_id, tag_down(first - 1), timeout=self.timeout)
        private, _ = self._join_key
        session = join_session(self.ctx, me, self.incarnation)
        for other, entry in joined.items():  # admitted together: the two join publics make the pair
            if other == me or not isinstance(entry, dict):
                continue
            theirs = join_session(self.ctx, other, entry.get("incarnation", 0))
            y = joiner_public(entry, joiner=other, me=me, session=theirs, group=self.group, pinned=pinned)
            self.share_keys[other] = pair_share_key(self.group, private, y, session="|".join(sorted([session, theirs])),
                                                    me=me, peer=other)
        self._adopt_answers([p for p in contributors if p != me], self.wait_s)
        self.epoch, self.session = epoch, epoch_session(self.ctx, epoch)
        self.start_round = first
        self.last_contributors = [c for c in contributors if c in self.index]
        self.active = set(self.last_contributors) or set(self.trainers)
        self._layout = dict(mean.tensors)
        self._ready = True
        return dict(mean.tensors)

    def _adopt_answers(self, peers: list[str], wait_s: float) -> None:
        """Channel keys from the members' `sa/chan` answers to this rejoiner (those here within wait_s)."""
        if self._join_key is None or not peers:
            return
        me, pinned, private = self.node_id, _identities(self.ctx), self._join_key[0]
        session = join_session(self.ctx, me, self.incarnation)
        for peer, msg in self.comm.gather_until(peers, TAG_CHAN, wait_s).items():
            y = open_chan(msg.meta, sender=peer, me=me, session=session, group=self.group, pinned=pinned)
            self.share_keys[peer] = pair_share_key(self.group, private, y, session=session, me=me, peer=peer)

    def _key_joiners(self, meta: Mapping[str, Any]) -> None:
        """The root admitted `joined` from the next round on: fresh channel keys with each, new epoch."""
        joined, epoch = meta.get("joined"), meta.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch <= self.epoch:
            return
        me, pinned, key = self.node_id, _identities(self.ctx), self.ctx.identity_key
        for node, entry in sorted((joined or {}).items()) if isinstance(joined, dict) else ():
            if node == me or node not in self.index or not isinstance(entry, dict):
                continue
            k = entry.get("incarnation")
            if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
                raise FrameError(f"round mean from {self.assist_id}: joined {node} without an incarnation")
            session = join_session(self.ctx, node, k)
            y = joiner_public(entry, joiner=node, me=me, session=session, group=self.group, pinned=pinned)
            private, public = generate_keypair(self.group, optimized=self.settings.optimized)
            self.comm.set_incarnation(node, k)
            self.comm.send(node, TAG_CHAN, meta=chan_message(session=session, receiver=node, group=self.group,
                                                             public=public, identity_key=key))
            self.share_keys[node] = pair_share_key(self.group, private, y, session=session, me=me, peer=node)
        self.epoch, self.session = epoch, epoch_session(self.ctx, epoch)

    # -- round keys ------------------------------------------------------------------------------
    def prepare(self, round_idx: int, words: int | None = None) -> Prepared:
        """Exchange round keys with the peers (waiting up to round_timeout_s) and, given `words`, draw the pad."""
        if round_idx in self._prepared:
            return self._prepared[round_idx]
        me, rs = self.node_id, round_session(self.session, round_idx)
        own = OwnRound.draw(self.group, optimized=self.settings.optimized, t=self.t, members=self.trainers,
                            session=rs, owner=me)
        key = self.ctx.identity_key
        # a rejoiner keys late answers (a member that was not among the last round's contributors)
        self._adopt_answers([p for p in self.peers if p not in self.share_keys], 0)
        keyed = [p for p in self.peers if p in self.share_keys]  # a rejoiner may lack a channel with some
        # all or none: a party killed while sending must not leave its mask key shared with fewer peers
        # than pair with it (the root could then not remove its pads: "1 share(s), threshold 3")
        self.comm.send_each(tag_keys(round_idx), {peer: keys_message(
            own, share_key=self.share_keys[peer], epoch_session=self.session, epoch=self.epoch,
            round_idx=round_idx, sender=me, receiver=peer, x_receiver=self.index[peer], group_bits=self.group.bits,
            identity_key=key) for peer in keyed})
        active = [p for p in keyed if p in self.active]
        got = self.comm.gather_until(active, tag_keys(round_idx), self.wait_s)
        others = [p for p in keyed if p not in self.active]
        if others:  # a party late last round: taken if its keys come within a grace after the others'
            got.update(self.comm.gather_until(others, tag_keys(round_idx), self.grace_s))
        held = self._open_keys(round_idx, got)
        s = self.settings
        streams: dict[str, PadStream] = {
            p: pad_stream(shared_secret(self.group, own.private, h.public), csprng=s.csprng, method=s.method,
                          session=rs, node_a=me, node_b=p, lanes=s.lanes) for p, h in held.items()}
        streams[SELF_PEER] = self_mask_stream(own.seed, csprng=s.csprng, method=s.method, session=rs, owner=me,
                                              lanes=s.lanes)
        prep = Prepared(own, held, streams)
        if words is not None:
            prep.pad = self._draw(prep, words)
        self._prepared = {round_idx: prep}
        return prep

    def _open_keys(self, round_idx: int, got: Mapping[str, Any]) -> dict[str, Any]:
        """Verify and decrypt peers' round-key messages (their public values and our shares)."""
        me, pinned = self.node_id, _identities(self.ctx)
        for p in got:
            if pinned and not pinned.get(p):
                raise SecurityError(f"round {round_idx} keys {p} -> {me}: fed_conf.json pins identities but none for {p}")
        return {p: open_keys_message(msg.meta, group=self.group, share_key=self.share_keys[p],
                                     epoch_session=self.session, epoch=self.epoch, round_idx=round_idx, sender=p,
                                     receiver=me, x_receiver=self.index[me], pinned=pinned.get(p) if pinned else None)
                for p, msg in got.items()}

    def _draw(self, prep: Prepared, words: int) -> np.ndarray:
        pad = np.zeros(words, dtype=np.uint64)
        add_pads(pad, bits=self.settings.bits, self_id=self.node_id, peer_streams=prep.streams)
        return pad

    def prepare_async(self, round_idx: int) -> None:
        """prepare(round_idx) with the pad drawn, in a background thread (while local steps run)."""
        if self._layout is None:
            return
        words = n_words(self._layout, self.settings.bits)
        box: list = []

        def work() -> None:
            try:
                box.append(self.prepare(round_idx, words))
            except BaseException as exc:  # noqa: BLE001 - re-raised by aggregate
                box.append(exc)

        thread = threading.Thread(target=work, name=f"secagg-prepare-{round_idx}", daemon=True)
        self._thread = (round_idx, thread, box)
        thread.start()

    def _take(self, round_idx: int, words: int) -> Prepared:
        if self._thread is not None:
            r, thread, box = self._thread
            thread.join()
            self._thread = None
            if box and isinstance(box[0], BaseException):
                raise box[0]
        prep = self.prepare(round_idx)
        if prep.pad is None:
            prep.pad = self._draw(prep, words)
        elif prep.pad.size != words:
            raise JobError(f"{self.node_id}: round {round_idx}: tensors changed size since the pads were drawn")
        return prep

    # -- the round -------------------------------------------------------------------------------
    def aggregate(self, round_idx: int, tensors: Mapping[str, Any], weight: float) -> dict[str, np.ndarray]:
        """Double-mask (tensors, weight), upload, answer the root's share request, receive the mean."""
        if not self._ready:
            raise JobError(f"{self.node_id}: secure aggregation used before setup() and receive_initial()")
        st = self._begin(round_idx)
        who = f"{self.node_id}: round {round_idx}"
        named = as_numpy(tensors, who)
        w = check_weight(weight, who, allow_zero=True)
        bits = self.settings.bits
        prep = self._take(round_idx, n_words(named, bits))
        t0 = time.perf_counter()
        masked = encode(named, w, who, bits=bits, frac_bits=self.settings.frac_bits, n_parties=len(self.trainers),
                        self_id=self.node_id, peer_streams={})
        for name, view in split_words(prep.pad, masked).items():
            add_into(masked[name], view, bits)
        st.mask_ms = round((time.perf_counter() - t0) * 1000, 3)
        self.comm.send(self.assist_id, tag_up(round_idx), masked, meta={
            "paired": sorted(prep.held), "public": format(prep.own.public, "x"), "commit": prep.own.commit})
        msg = self.comm.recv_any(self.assist_id, [tag_ask(round_idx), tag_down(round_idx)], timeout=self.timeout)
        if msg.tag == tag_ask(round_idx):
            self._answer(round_idx, msg.meta, prep)
            msg = self.comm.recv(self.assist_id, tag_down(round_idx), timeout=self.timeout)
        check_same_layout(named, msg.tensors, f"round {round_idx} aggregate from {self.assist_id}",
                          dtype=np.dtype(np.float32))
        contributors = msg.meta.get("contributors")
        self.last_contributors = [c for c in contributors if c in self.index] if isinstance(contributors, list) else []
        self.active = set(self.last_contributors) or set(self.trainers)
        self._key_joiners(msg.meta)  # before the next round's keys (and their precomputation)
        st.parties = len(self.last_contributors)
        self._end()
        if self.dropout.precompute_pads:
            self.prepare_async(round_idx + 1)
        return dict(msg.tensors)

    def _answer(self, round_idx: int, meta: Mapping[str, Any], prep: Prepared) -> None:
        """Reveal seed shares of the survivors and key shares of the dropped, if that is safe (Ledger)."""
        survivors, dropped = meta.get("survivors"), meta.get("dropped")
        if not (isinstance(survivors, list) and isinstance(dropped, list)
                and all(isinstance(n, str) for n in survivors + dropped)):
            raise FrameError(f"round {round_idx} share request from {self.assist_id}: malformed")
        self.ledger.allow(round_idx, me=self.node_id, asker=self.assist_id, members=self.trainers,
                          survivors=survivors, dropped=dropped, floor=self.floor)
        me = self.node_id
        # keys that came after this party stopped waiting still carry our shares: the root may need them
        # (a party that others paired with, or a survivor whose self-mask needs t seed shares)
        late = [o for o in survivors + dropped if o != me and o not in prep.held and o in self.share_keys]
        if late:
            shares = dict(prep.held)
            shares.update(self._open_keys(round_idx, self.comm.gather_until(late, tag_keys(round_idx), 0)))
            prep = Prepared(prep.own, shares, prep.streams, pad=prep.pad)
        seeds = {o: encode_share(prep.own.seed_shares[self.index[me]] if o == me else prep.held[o].seed_share).hex()
                 for o in survivors if o == me or o in prep.held}
        keys = {v: encode_share(prep.held[v].key_share).hex() for v in dropped if v in prep.held}
        publics = {v: format(prep.held[v].public, "x") for v in dropped if v in prep.held}
        self.comm.send(self.assist_id, tag_reveal(round_idx), meta={"seeds": seeds, "keys": keys, "publics": publics})
