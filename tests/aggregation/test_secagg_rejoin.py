"""A label trainer that died and restarted rejoins secure aggregation at a later round (threads, real Redis)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from xfed.aggregation import make_leaf, make_root
from xfed.aggregation.secagg_join import TAG_JOIN, check_join, join_message, join_session, open_chan
from xfed.broker.channels import Comm
from xfed.broker.connection import connect
from xfed.broker.keys import Keys
from xfed.crypto import generate_keypair, named_group
from xfed.errors import SecurityError

from .conftest import Ctx, run_parties
from .test_secagg import TRAINERS, WEIGHTS, assert_exact, capture_sums, check_mean, enc, update

ROUNDS = 5
GROUP = named_group(2048)


def reported_round(ctx, r):
    return any(d.get("secagg", {}).get("round") == r for kind, d in ctx.reports if kind == "metrics")


def wait_for(cond, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def restarted(ctx: Ctx, redis_session, incarnation: int) -> Ctx:
    """The same node as a fresh process would build it: new Redis client, new Comm of incarnation k."""
    r = connect(redis_session.address, retry_s=5)
    comm = Comm(r, Keys("agg"), ctx.job_id, 0, ctx.node_id, timeout=20, poll_s=0.05, incarnation=incarnation)
    return Ctx(ctx.job_id, 0, ctx.node_id, list(ctx.trainer_ids), ctx.assist_id, comm, fed=ctx.fed,
               incarnation=incarnation)


def test_a_restarted_trainer_rejoins_and_every_round_is_the_mean_of_its_contributors(federation, redis_session):
    """node-4 takes part in round 0 and dies; the others go on without it; it restarts as incarnation 1,
    the root admits it at a round boundary, it receives the global mean and contributes again."""
    ctxs = federation(TRAINERS)
    e = enc(timeout=1.0, precompute_pads=True)
    pace = 0.2  # the local steps: gives the restarted node time to ask before the stage ends

    def leaf(ctx, first_dead=None):
        def fn():
            agg = make_leaf(ctx, e)
            agg.setup()
            agg.receive_initial()
            outs = {}
            for r in range(agg.start_round, ROUNDS):
                if r == first_dead:
                    return agg.start_round, outs
                time.sleep(pace)
                outs[r] = (agg.aggregate(r, update(ctx.node_id, r), WEIGHTS[ctx.node_id]), agg.last_contributors)
            return agg.start_round, outs
        return fn

    def root():
        agg = make_root(ctxs["assist"], e)
        capture_sums(agg)
        agg.last_round = ROUNDS - 1
        agg.setup()
        agg.broadcast_initial({"a": np.zeros((3, 5), np.float32), "b": np.zeros(7, np.float32)})
        return [(agg.aggregate(r, None, 0.0), agg.last_contributors) for r in range(ROUNDS)], agg

    def comeback():
        wait_for(lambda: reported_round(ctxs["assist"], 0), "round 0")  # node-4 is dead from round 1 on
        ctx = restarted(ctxs["node-4"], redis_session, 1)
        ctxs["assist"].rejoins = {"node-4": 1}  # what the scheduler records when it re-dispatches
        return leaf(ctx)()

    fns = {n: leaf(ctxs[n]) for n in TRAINERS[:3]}
    fns["node-4"] = leaf(ctxs["node-4"], first_dead=1)
    fns["node-4b"] = comeback
    fns["assist"] = root
    res = run_parties(fns, timeout=90)
    outs, agg = res["assist"]
    contributors = [c for _, c in outs]
    assert contributors[0] == TRAINERS and contributors[1] == TRAINERS[:3]
    first, mine = res["node-4b"]
    assert 2 <= first < ROUNDS and sorted(mine) == list(range(first, ROUNDS))
    assert any(c == TRAINERS for c in contributors[first:]), contributors  # it contributed again
    for r, (mean, who) in enumerate(outs):
        check_mean(mean, who, r)  # each round: the plain weighted mean of exactly its contributors
        assert_exact(agg, r, who)  # and its sum bit for bit that of their encodings (the old path's)
    for r, (mean, who) in mine.items():  # the rejoiner holds the same global model as everyone
        np.testing.assert_array_equal(mean["a"], outs[r][0]["a"])
        assert who == outs[r][1]
    assert agg.epoch == 1 and agg.incarnations == {"node-4": 1}
    joined = [d["secagg"] for kind, d in ctxs["assist"].reports if kind == "metrics" and "joined" in d["secagg"]]
    assert joined == [{"joined": {"node-4": 1}, "from_round": first, "epoch": 1}]


def test_a_restart_when_no_round_is_left_is_never_admitted(federation, redis_session):
    """The root admits a rejoiner only while a round is left after the current one: a join request of
    node-4's incarnation 1 is there during round 0, the last one; the stage ends without admitting it."""
    ctxs = federation(TRAINERS)
    e = enc(timeout=1.0)
    ctxs["assist"].rejoins = {"node-4": 1}
    late = restarted(ctxs["node-4"], redis_session, 1)
    late.comm.send("assist", TAG_JOIN, meta=join_message(
        node="node-4", incarnation=1, peers=TRAINERS[:3], session=join_session(late, "node-4", 1), group=GROUP,
        public=generate_keypair(GROUP)[1]))

    def root():
        agg = make_root(ctxs["assist"], e)
        agg.last_round = 0
        agg.setup()
        agg.broadcast_initial({"a": np.zeros((3, 5), np.float32), "b": np.zeros(7, np.float32)})
        return agg.aggregate(0, None, 0.0), agg

    def leaf(ctx):
        def fn():
            agg = make_leaf(ctx, e)
            agg.setup()
            agg.receive_initial()
            return agg.aggregate(0, update(ctx.node_id, 0), WEIGHTS[ctx.node_id])
        return fn

    fns = {n: leaf(ctxs[n]) for n in TRAINERS}
    fns["assist"] = root
    mean, agg = run_parties(fns)["assist"]
    assert agg.epoch == 0 and agg.incarnations == {} and agg.listening == {"node-4": 1}
    assert agg.comm.gather_until(["node-4"], TAG_JOIN, 0)  # it was there, unread
    check_mean(mean, TRAINERS, 0)
    assert not any("joined" in d.get("secagg", {}) for _, d in ctxs["assist"].reports)


def test_join_values_are_bound_to_their_incarnation_and_session():
    _, public = generate_keypair(GROUP)
    ctx = Ctx("7", 0, "node-4", TRAINERS, "assist", comm=None)
    meta = join_message(node="node-4", incarnation=2, peers=TRAINERS[:3], session=join_session(ctx, "node-4", 2),
                        group=GROUP, public=public)
    assert check_join(meta, node="node-4", incarnation=2, group=GROUP)["public"] == format(public, "x")
    with pytest.raises(SecurityError, match="made for incarnation 2"):  # replayed from an earlier restart
        check_join(meta, node="node-4", incarnation=3, group=GROUP)
    with pytest.raises(SecurityError, match="public value rejected"):
        check_join({**meta, "public": "1"}, node="node-4", incarnation=2, group=GROUP)
    chan = {"group": GROUP.bits, "public": format(public, "x"), "session": join_session(ctx, "node-4", 1)}
    with pytest.raises(SecurityError, match="replayed"):
        open_chan(chan, sender="node-1", me="node-4", session=join_session(ctx, "node-4", 2), group=GROUP, pinned={})


def test_with_identities_join_and_answer_values_must_carry_the_right_signature():
    from xfed.aggregation.secagg_join import chan_message, joiner_public
    from xfed.security.identity import generate

    x, m = generate("node-4"), generate("node-1")
    pinned = {"node-4": x.public_hex, "node-1": m.public_hex}
    ctx = Ctx("7", 0, "node-4", TRAINERS, "assist", comm=None)
    session = join_session(ctx, "node-4", 1)
    _, public = generate_keypair(GROUP)
    entry = check_join(join_message(node="node-4", incarnation=1, peers=TRAINERS[:3], session=session, group=GROUP,
                                    public=public, identity_key=x), node="node-4", incarnation=1, group=GROUP)
    assert joiner_public(entry, joiner="node-4", me="node-1", session=session, group=GROUP, pinned=pinned) == public
    with pytest.raises(SecurityError):  # signed for another incarnation's session
        joiner_public(entry, joiner="node-4", me="node-1", session=join_session(ctx, "node-4", 2), group=GROUP,
                      pinned=pinned)
    with pytest.raises(SecurityError):  # node-1's signature moved onto node-2's slot
        joiner_public({**entry, "dh_sig": {"node-2": entry["dh_sig"]["node-1"]}}, joiner="node-4", me="node-2",
                      session=session, group=GROUP, pinned={**pinned, "node-2": generate("node-2").public_hex})
    with pytest.raises(SecurityError, match="unsigned"):
        joiner_public({**entry, "dh_sig": {}}, joiner="node-4", me="node-1", session=session, group=GROUP,
                      pinned=pinned)
    answer = chan_message(session=session, receiver="node-4", group=GROUP, public=public, identity_key=m)
    assert open_chan(answer, sender="node-1", me="node-4", session=session, group=GROUP, pinned=pinned) == public
    _, other = generate_keypair(GROUP)
    with pytest.raises(SecurityError):  # a broker swapping the answer's value
        open_chan({**answer, "public": format(other, "x")}, sender="node-1", me="node-4", session=session,
                  group=GROUP, pinned=pinned)
