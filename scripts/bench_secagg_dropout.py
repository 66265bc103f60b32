"""The dropout-tolerant rows of bench_secagg (issue 16), measured in the same run as today's leaf/root rows.

- sa_setup_s: one trainer's share setup for one round (= one key epoch of the masks): draw the mask
  key pair and seed, Shamir-split both for K trainers, seal K-1 messages, open K-1 received ones,
  K-1 DH agreements and K stream instantiations (ffdhe3072, short exponents). Median of 5.
- sa_leaf_mask_s: a leaf's round with its pads drawn at the aggregation point: K-1 pairwise streams
  plus the self-mask stream, encode, add (the critical path without precompute_pads), timed in
  alternation with today's otp leaf (sa_today_leaf_s, `mask` with K-1 streams): sa_leaf_ratio_paired
  is the median of the per-pair wall-clock ratios, sa_leaf_cpu_ratio the ratio of CPU seconds
  (this process + pad workers), which a shared machine's other load does not inflate.
- sa_leaf_ready_s: the same round with the pads drawn beforehand (precompute_pads: while local steps
  run): encode + one add of the pad. sa_pad_add_s: the add alone; numpy_add_s: a plain uint64
  add of the same bytes.
- sa_root_s: the root's round without dropouts: reconstruct K seeds (t-of-K), regenerate and subtract
  K self-masks, sum and decode. sa_root_2drop_s: with 2 of K dropped (K-2 survivors): also
  reconstruct 2 mask keys and regenerate their pads with every survivor.
  sa_root_extra_2drop_s = the reconstruction of the 2 keys + their 2 x (K-2) pads alone
  (sa_root_extra_2drop_cpu_s in CPU seconds; sa_root_extra_cpu_vs_leaf against today's leaf's CPU).
- sa_setup_cpu_s: the share setup in CPU seconds (one thread).
- sa_join_cpu_s / sa_join_member_cpu_s: a rejoin (docs/SECAGG.md §7) in CPU seconds, median of 5: the
  restarted node's channel keys with K-1 members (join key pair, K-1 answers checked, K-1 DH and
  share keys), and one member's part (check the join value, fresh key pair, answer, DH, share key).
  Without identities (signatures add one Ed25519 sign/verify per pair).
  One root round each (the uploads' pads between survivors, which cancel in the sum and which the
  root never touches, are left out of the uploads to keep the run short); the decoded mean is
  checked against the plain weighted mean of the survivors (sa_max_abs_err).
Leaf rows: medians of `rounds` after a warm-up.

The root's memory and round time as the parties grow (streaming vs holding every upload, over a
real redis-server) are scripts/bench_secagg_root.py.
"""

from __future__ import annotations

import secrets
import statistics
import time

import numpy as np

from xfed.aggregation.secagg_keys import (
    OwnRound,
    indices,
    keys_message,
    open_keys_message,
    reconstruct_key,
    reconstruct_seed,
)
from xfed.crypto import generate_keypair, mask, named_group, pad_stream, shared_secret, unmask_sum
from xfed.crypto.fixedpoint import add_into, encoded_shape
from xfed.crypto.fixedpoint import encode as fp_encode
from xfed.crypto.otp import add_pads
from xfed.crypto.selfmask import SELF_PEER, self_mask_stream
from xfed.crypto.shamir import share_key

SESSION = "bench-job/0/0/e0"


def _median(fn, rounds: int) -> float:
    fn()  # warm-up (worker processes, buffers)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _timed(fn, cpu) -> tuple[float, float]:
    """(wall, CPU over this process and its pad workers) of one call."""
    c, t = cpu(), time.perf_counter()
    fn()
    return time.perf_counter() - t, cpu() - c


def _join_rows(group, ids: list[str], me: str) -> dict:
    """CPU seconds of a rejoin's channel keys: the rejoiner `me` with every other member, and one member."""
    from types import SimpleNamespace

    from xfed.aggregation.secagg_join import (
        chan_message,
        join_message,
        join_session,
        joiner_public,
        open_chan,
        pair_share_key,
    )

    ctx = SimpleNamespace(job_id="bench-job", stage_id=0, attempt=0)
    peers = [p for p in ids if p != me]
    session = join_session(ctx, me, 1)
    private, public = generate_keypair(group)
    entry = join_message(node=me, incarnation=1, peers=peers, session=session, group=group, public=public)
    answers = {}
    for p in peers:
        _, pub = generate_keypair(group)
        answers[p] = chan_message(session=session, receiver=me, group=group, public=pub)

    def joiner() -> None:
        own_private, own_public = generate_keypair(group)
        join_message(node=me, incarnation=1, peers=peers, session=session, group=group, public=own_public)
        for p, meta in answers.items():
            y = open_chan(meta, sender=p, me=me, session=session, group=group, pinned={})
            pair_share_key(group, own_private, y, session=session, me=me, peer=p)

    def member() -> None:
        y = joiner_public(entry, joiner=me, me=peers[0], session=session, group=group, pinned={})
        mine, pub = generate_keypair(group)
        chan_message(session=session, receiver=me, group=group, public=pub)
        pair_share_key(group, mine, y, session=session, me=peers[0], peer=me)

    out = {}
    for name, fn in (("sa_join_cpu_s", joiner), ("sa_join_member_cpu_s", member)):
        times = []
        for _ in range(5):
            c0 = time.process_time()
            fn()
            times.append(time.process_time() - c0)
        out[name] = round(statistics.median(times), 4)
    return out


def rows(*, shapes: dict, data: dict, weights: dict, ids: list[str], me: str, bits: int, csprng: str, method: str,
         rounds: int, cpu, threshold: int | None = None) -> dict:
    """The sa_* rows; `cpu()` is CPU seconds of this process and its pad workers (bench_secagg.cpu_seconds)."""
    group = named_group(3072)
    k = len(ids)
    t = threshold or k // 2 + 1
    x = indices(ids)
    channel = {i: generate_keypair(group) for i in ids}
    skey = {(a, b): share_key(shared_secret(group, channel[a][0], channel[b][1]), session=SESSION, node_a=a, node_b=b)
            for a in ids for b in ids if a != b}
    round_no = [0]

    def draw_all() -> dict[str, OwnRound]:
        round_no[0] += 1
        rs = f"{SESSION}/r{round_no[0]}"
        return {i: OwnRound.draw(group, optimized=True, t=t, members=ids, session=rs, owner=i) for i in ids}

    def setup_one(owns: dict[str, OwnRound]) -> dict:
        """What `me` does in one round's key setup (its peers' messages are made outside the timing)."""
        rs = f"{SESSION}/r{round_no[0]}"
        own = OwnRound.draw(group, optimized=True, t=t, members=ids, session=rs, owner=me)
        for p in ids:
            if p != me:
                keys_message(own, share_key=skey[(me, p)], epoch_session=SESSION, epoch=0, round_idx=round_no[0],
                             sender=me, receiver=p, x_receiver=x[p], group_bits=group.bits)
        streams = {}
        for p, meta in incoming.items():
            held = open_keys_message(meta, group=group, share_key=skey[(me, p)], epoch_session=SESSION, epoch=0,
                                     round_idx=round_no[0], sender=p, receiver=me, x_receiver=x[me])
            streams[p] = pad_stream(shared_secret(group, own.private, held.public), csprng=csprng, method=method,
                                    session=rs, node_a=me, node_b=p)
        streams[SELF_PEER] = self_mask_stream(own.seed, csprng=csprng, method=method, session=rs, owner=me)
        return streams

    owns = draw_all()
    incoming = {p: keys_message(owns[p], share_key=skey[(p, me)], epoch_session=SESSION, epoch=0,
                                round_idx=round_no[0], sender=p, receiver=me, x_receiver=x[me], group_bits=group.bits)
                for p in ids if p != me}
    setup_times, setup_cpu = [], []
    for _ in range(5):
        t0, c0 = time.perf_counter(), time.process_time()
        streams = setup_one(owns)
        setup_times.append(time.perf_counter() - t0)
        setup_cpu.append(time.process_time() - c0)

    join = _join_rows(group, ids, me)
    names = sorted(shapes)
    n_words = sum(int(np.prod(encoded_shape(shapes[n], bits))) for n in names)

    def encode_mine() -> dict[str, np.ndarray]:
        return {n: fp_encode(data[me][n], bits=bits, weight=weights[me], n_parties=k, name=n) for n in names}

    def add_pad(enc: dict[str, np.ndarray], pad: np.ndarray) -> None:
        off = 0
        for n in names:
            v = enc[n]
            add_into(v, pad[off:off + v.size].reshape(v.shape), bits)
            off += v.size

    def fresh_streams() -> dict:
        rs = f"{SESSION}/r{secrets.randbits(32)}"
        out = {p: pad_stream(secrets.token_bytes(384), csprng=csprng, method=method, session=rs, node_a=me, node_b=p)
               for p in ids if p != me}
        out[SELF_PEER] = self_mask_stream(secrets.token_bytes(32), csprng=csprng, method=method, session=rs, owner=me)
        return out

    def leaf_inline() -> None:
        enc = encode_mine()
        pad = np.zeros(n_words, dtype=np.uint64)
        add_pads(pad, bits=bits, self_id=me, peer_streams=fresh_streams())
        add_pad(enc, pad)

    def leaf_today() -> None:  # today's otp leaf (bench_secagg's leaf_mask_s), in the same loop
        rs = f"{SESSION}/t{secrets.randbits(32)}"
        mask(data[me], bits=bits, weight=weights[me], n_parties=k, self_id=me, peer_streams={
            p: pad_stream(secrets.token_bytes(384), csprng=csprng, method=method, session=rs, node_a=me, node_b=p)
            for p in ids if p != me})

    leaf_inline()  # warm-up
    today, inline = [], []
    for _ in range(rounds):  # alternated: both see the same drift of a shared machine's speed
        today.append(_timed(leaf_today, cpu))
        inline.append(_timed(leaf_inline, cpu))
    leaf_mask = statistics.median(w for w, _ in inline)
    ready_pad = np.zeros(n_words, dtype=np.uint64)
    add_pads(ready_pad, bits=bits, self_id=me, peer_streams=streams)
    leaf_ready = _median(lambda: add_pad(encode_mine(), ready_pad), max(rounds, 5))
    enc_once = encode_mine()
    pad_add = _median(lambda: add_pad(enc_once, ready_pad), max(rounds, 5))
    a, b = np.ones(n_words, dtype=np.uint64), np.ones(n_words, dtype=np.uint64)
    numpy_add = _median(lambda: np.add(a, b, out=a), max(rounds, 5))

    # Root: real double-masked uploads of K (or K-2) parties, reconstructed and unmasked.
    def root_round(n_drop: int) -> tuple[float, float, float]:
        owns = draw_all()
        rs = f"{SESSION}/r{round_no[0]}"
        survivors, dropped = ids[: k - n_drop], ids[k - n_drop:]
        pads = {}
        for u in survivors:  # each survivor's pads: self + with the dropped (its pads with other survivors
            # cancel in the sum and the root never touches them, so they are left out to keep the run short)
            st = {p: pad_stream(shared_secret(group, owns[u].private, owns[p].public), csprng=csprng, method=method,
                                session=rs, node_a=u, node_b=p) for p in dropped}
            st[SELF_PEER] = self_mask_stream(owns[u].seed, csprng=csprng, method=method, session=rs, owner=u)
            pads[u] = np.zeros(n_words, dtype=np.uint64)
            add_pads(pads[u], bits=bits, self_id=u, peer_streams=st)
        uploads = []
        for u in survivors:
            enc = {n: fp_encode(data[u][n], bits=bits, weight=weights[u], n_parties=k, name=n) for n in names}
            add_pad(enc, pads[u])
            uploads.append(enc)
        c0, t0 = cpu(), time.perf_counter()
        holders = [ids[i] for i in range(t)]
        flat = np.zeros(n_words, dtype=np.uint64)
        self_streams = {u: self_mask_stream(reconstruct_seed(u, [owns[u].seed_shares[x[h]] for h in holders], t,
                                                             commit=owns[u].commit, session=rs),
                                            csprng=csprng, method=method, session=rs, owner=u) for u in survivors}
        add_pads(flat, bits=bits, self_id=SELF_PEER, peer_streams=self_streams)
        c1, t1 = cpu(), time.perf_counter()
        for v in dropped:
            sk = reconstruct_key(v, [owns[v].key_shares[x[h]] for h in holders], t, group=group, public=owns[v].public)
            st = {u: pad_stream(shared_secret(group, sk, owns[u].public), csprng=csprng, method=method, session=rs,
                                node_a=v, node_b=u) for u in survivors}
            add_pads(flat, bits=bits, self_id=v, peer_streams=st)
        c2, t2 = cpu(), time.perf_counter()
        corr, off = {}, 0
        for n in names:
            shape = uploads[0][n].shape
            size = int(np.prod(shape))
            corr[n] = flat[off:off + size].reshape(shape)
            off += size
        total_w = sum(weights[u] for u in survivors)
        got = unmask_sum(uploads + [corr], bits=bits, divide_by=total_w)
        c3, t3 = cpu(), time.perf_counter()
        err = max(float(np.abs(got[n] - sum(weights[u] * data[u][n].astype(np.float64) for u in survivors)
                               / total_w).max(initial=0.0)) for n in names)
        if err > 1e-6:
            raise AssertionError(f"secagg bench: decoded mean off by {err}")
        return t3 - t0, t2 - t1, err, c3 - c0, c2 - c1

    no_drop = [root_round(0)]
    two_drop = [root_round(2)]
    today_cpu = statistics.median(c for _, c in today)
    return {
        "sa_threshold": t,
        "sa_setup_s": round(statistics.median(setup_times), 4),
        "sa_setup_cpu_s": round(statistics.median(setup_cpu), 4),
        **join,
        "sa_today_leaf_s": round(statistics.median(w for w, _ in today), 4),
        "sa_today_leaf_cpu_s": round(today_cpu, 4),
        "sa_leaf_mask_s": round(leaf_mask, 4),
        "sa_leaf_cpu_s": round(statistics.median(c for _, c in inline), 4),
        "sa_leaf_ratio_paired": round(statistics.median(i[0] / d[0] for i, d in zip(inline, today, strict=True)), 3),
        "sa_leaf_cpu_ratio": round(statistics.median(c for _, c in inline) / today_cpu, 3),
        "sa_leaf_ready_s": round(leaf_ready, 6),
        "sa_pad_add_s": round(pad_add, 6),
        "numpy_add_s": round(numpy_add, 6),
        "sa_root_s": round(min(r[0] for r in no_drop), 4),
        "sa_root_2drop_s": round(min(r[0] for r in two_drop), 4),
        "sa_root_extra_2drop_s": round(min(r[1] for r in two_drop), 4),
        "sa_root_cpu_s": round(no_drop[0][3], 4),
        "sa_root_extra_2drop_cpu_s": round(two_drop[0][4], 4),
        "sa_root_extra_cpu_vs_leaf": round(two_drop[0][4] / today_cpu, 3),
        "sa_max_abs_err": max(r[2] for r in no_drop + two_drop),
    }
