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
a party that was late in round r takes part again in round r+1.
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
from xfed.aggregation.dropout import check_membership, parse_dropout
from xfed.aggregation.keyexchange import OtpSettings, exchange_publics
from xfed.aggregation.secagg_keys import (
    HeldShares,
    Ledger,
    OwnRound,
    indices,
    keys_message,
    open_keys_message,
    round_session,
)
from xfed.crypto import generate_keypair, named_group, pad_stream, shared_secret
from xfed.crypto.fixedpoint import add_into, words_per_element
from xfed.crypto.otp import PadStream, add_pads
from xfed.crypto.selfmask import SELF_PEER, self_mask_stream
from xfed.crypto.shamir import encode_share, share_key
from xfed.errors import FrameError, JobError, SecurityError

EPOCH = 0  # membership epoch: one per stage attempt (a rejoin would start the next)


def tag_keys(r: int) -> str:
    return f"sa/{int(r)}/keys"


def tag_ask(r: int) -> str:
    return f"sa/{int(r)}/ask"


def tag_reveal(r: int) -> str:
    return f"sa/{int(r)}/reveal"


def epoch_session(ctx: Any) -> str:
    return f"{ctx.job_id}/{ctx.stage_id}/{getattr(ctx, 'attempt', 0)}/e{EPOCH}"


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


def _identities(ctx: Any) -> dict[str, str]:
    return dict(getattr(getattr(ctx, "fed", None), "identities", None) or {})


class _SecAgg:
    def _configure(self, otp: Mapping[str, Any] | None, min_parties: int | None) -> None:
        opts = dict(otp or {})
        self.settings = OtpSettings.from_config(opts)
        self.dropout = parse_dropout(opts.get("dropout"))
        if self.dropout is None:
            raise JobError("secure aggregation with dropouts needs encryption.otp.dropout")
        self.floor = check_membership(self.dropout, len(self.trainers), min_parties)
        self.t = self.dropout.threshold
        self.wait_s = self.dropout.round_timeout_s
        self.group = named_group(self.settings.group_bits)
        self.index = indices(self.trainers)
        self.session = epoch_session(self.ctx)
        self.active = set(self.trainers)  # who took part last round: waited for in full
        # how long a party that missed the last round is waited for once the others are in
        self.grace_s = min(self.wait_s, max(1.0, self.wait_s / 10))


class SecAggLeaf(_SecAgg, LeafBase):
    def __init__(self, ctx: Any, otp: Mapping[str, Any] | None = None, *, min_parties: int | None = None,
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

    def setup(self) -> None:
        """Channel DH with every peer (fresh per stage attempt): the keys that seal shares."""
        t0 = time.perf_counter()
        if self.node_id not in self.trainers:
            raise JobError(f"{self.node_id} is not a label trainer of this job")
        private, public = generate_keypair(self.group, optimized=self.settings.optimized)
        publics = exchange_publics(self.comm, self.peers, session=self.session, group=self.group, public=public,
                                   identity_key=getattr(self.ctx, "identity_key", None),
                                   identities=_identities(self.ctx), timeout=self.timeout)
        self.share_keys = {p: share_key(shared_secret(self.group, private, y), session=self.session,
                                        node_a=self.node_id, node_b=p) for p, y in publics.items()}
        self.setup_ms = round((time.perf_counter() - t0) * 1000, 3)

    def receive_initial(self) -> dict[str, np.ndarray]:
        initial = super().receive_initial()
        if self.dropout.precompute_pads:
            self.prepare_async(0)
        return initial

    # -- round keys ------------------------------------------------------------------------------
    def prepare(self, round_idx: int, words: int | None = None) -> Prepared:
        """Exchange round keys with the peers (waiting up to round_timeout_s) and, given `words`, draw the pad."""
        if round_idx in self._prepared:
            return self._prepared[round_idx]
        me, rs = self.node_id, round_session(self.session, round_idx)
        own = OwnRound.draw(self.group, optimized=self.settings.optimized, t=self.t, members=self.trainers,
                            session=rs, owner=me)
        key = getattr(self.ctx, "identity_key", None)
        for peer in self.peers:
            self.comm.send(peer, tag_keys(round_idx), meta=keys_message(
                own, share_key=self.share_keys[peer], epoch_session=self.session, epoch=EPOCH, round_idx=round_idx,
                sender=me, receiver=peer, x_receiver=self.index[peer], group_bits=self.group.bits, identity_key=key))
        active = [p for p in self.peers if p in self.active]
        got = self.comm.gather_until(active, tag_keys(round_idx), self.wait_s)
        others = [p for p in self.peers if p not in self.active]
        if others:  # a party late last round: taken if its keys come within a grace after the others'
            got.update(self.comm.gather_until(others, tag_keys(round_idx), self.grace_s))
        pinned = _identities(self.ctx)
        for p in got:
            if pinned and not pinned.get(p):
                raise SecurityError(f"round {round_idx} keys {p} -> {me}: fed_conf.json pins identities but none for {p}")
        held = {p: open_keys_message(msg.meta, group=self.group, share_key=self.share_keys[p],
                                     epoch_session=self.session, epoch=EPOCH, round_idx=round_idx, sender=p,
                                     receiver=me, x_receiver=self.index[me], pinned=pinned.get(p) if pinned else None)
                for p, msg in got.items()}
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
        if not self.share_keys and self.peers:
            raise JobError(f"{self.node_id}: secure aggregation used before setup()")
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
        seeds = {o: encode_share(prep.own.seed_shares[self.index[me]] if o == me else prep.held[o].seed_share).hex()
                 for o in survivors if o == me or o in prep.held}
        keys = {v: encode_share(prep.held[v].key_share).hex() for v in dropped if v in prep.held}
        publics = {v: format(prep.held[v].public, "x") for v in dropped if v in prep.held}
        self.comm.send(self.assist_id, tag_reveal(round_idx), meta={"seeds": seeds, "keys": keys, "publics": publics})
