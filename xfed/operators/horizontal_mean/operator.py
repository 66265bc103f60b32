"""One stage of horizontal_mean on one node: rounds of a checked weighted mean via xfed.aggregation."""
from __future__ import annotations

import json
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from xfed.errors import ConfigError, JobError
from xfed.operators.horizontal_mean.config import Params

PARAMS_TAG = "horizontal_mean.params"


def contribution(seed: int, node_id: str, round_idx: int, dim: int) -> np.ndarray:
    """The vector `node_id` contributes in `round_idx` (any node can recompute it)."""
    rng = np.random.default_rng([seed, zlib.crc32(node_id.encode()), round_idx])
    return rng.standard_normal(dim).astype(np.float32)


def contributors(trainer_ids: list[str], assist_id: str | None, params: Params) -> dict[str, float]:
    """node -> weight of everyone who adds a vector."""
    nodes = list(trainer_ids) + ([assist_id] if params.assist_contributes and assist_id else [])
    if params.weighting == "uniform":
        return {n: 1.0 for n in nodes}
    return {n: float(1 + i) for i, n in enumerate(nodes)}


def expected_mean(params: Params, weights: dict[str, float], round_idx: int) -> np.ndarray:
    total = sum(weights.values())
    acc = np.zeros(params.dim, dtype=np.float64)
    for node, w in weights.items():
        acc += w * contribution(params.seed, node, round_idx, params.dim).astype(np.float64)
    return acc / total


def load_params(ctx) -> Params:
    raw = getattr(getattr(ctx.stage, "train_info", None), "train_params", None) or {}
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "train_params"
        raise ConfigError(f"trainer_config_{ctx.node_id}.json stage {ctx.stage_id}: train_info.train_params."
                          f"{where}: {first['msg']}") from None


def run(ctx) -> dict[str, Any]:
    """Entry point called by the node's stage runner (see docs/CONTRACTS.md, StageContext)."""
    from xfed.aggregation import make_leaf, make_root, tensors_digest

    own = load_params(ctx)
    if not ctx.assist_id:
        raise ConfigError("horizontal_mean needs an assist trainer (fed_conf.json fed_info.assist_trainer)")
    is_root = ctx.identity == "assist_trainer"
    if is_root:
        params = own
        ctx.comm.broadcast(ctx.trainer_ids, PARAMS_TAG, meta=params.shared)
    elif getattr(ctx, "incarnation", 0):
        params = own  # restarted into the running stage: the root's broadcast went to the old process
    else:
        msg = ctx.comm.recv(ctx.assist_id, PARAMS_TAG, timeout=own.timeout_s)
        params = _adopt(ctx, own, msg.meta)
    weights = contributors(ctx.trainer_ids, ctx.assist_id, params)
    agg = (make_root if is_root else make_leaf)(ctx, params.encryption)
    if hasattr(agg, "last_round"):  # secure aggregation with dropouts: a restarted node may rejoin until then
        agg.last_round = params.rounds - 1
    t0 = time.monotonic()
    agg.setup()
    if is_root:
        agg.broadcast_initial({"mean": np.zeros(params.dim, dtype=np.float32)})
    else:
        init = agg.receive_initial()  # a rejoiner: the last mean before its first round (start_round)
        if set(init) != {"mean"} or init["mean"].shape != (params.dim,):
            raise JobError(f"{ctx.node_id}: initial tensors from {ctx.assist_id} have the wrong shape")
    worst = 0.0
    history = []
    last_avg: dict = {}
    first = int(getattr(agg, "start_round", 0))
    for r in range(first, params.rounds):
        if params.round_delay_s:
            _sleep(ctx, params.round_delay_s)
        if ctx.should_stop():
            raise JobError(f"job {ctx.job_id}: stopped")
        start = time.monotonic()
        mine = ctx.node_id in weights
        tensors = {"mean": contribution(params.seed, ctx.node_id, r, params.dim)} if mine else None
        weight = weights.get(ctx.node_id, 0.0)
        avg = last_avg = agg.aggregate(r, tensors, weight)
        got = np.asarray(avg["mean"], dtype=np.float64)
        # dropout-tolerant secure aggregation sums only the round's survivors (and says who they were)
        summed = getattr(agg, "last_contributors", None) or list(weights)
        present = {n: w for n, w in weights.items() if n in summed or n not in ctx.trainer_ids}
        err = float(np.max(np.abs(got - expected_mean(params, present, r))))
        worst = max(worst, err)
        if err > params.tolerance:
            raise JobError(f"{ctx.node_id}: round {r}: aggregate differs from the expected mean by {err:.3g} "
                           f"(tolerance {params.tolerance:g})")
        ms = (time.monotonic() - start) * 1000
        row = {"round": r, "max_abs_err": err, "norm": float(np.linalg.norm(got)), "ms": round(ms, 2),
               "contributors": sorted(present)}
        stats = getattr(agg, "last_round_stats", None) or {}
        row.update({k: stats[k] for k in ("bytes_sent", "bytes_received", "mask_ms", "unmask_ms", "wait_ms")
                    if k in stats})
        history.append(row)
        ctx.report("metrics", history[-1])
        ctx.report("progress", {"round": r + 1, "rounds": params.rounds, "fraction": (r + 1) / params.rounds})
    result = {"rounds": params.rounds, "dim": params.dim, "encryption": next(iter(params.encryption)),
              "contributors": len(weights), "max_abs_err": worst, "first_round": first,
              "seconds": round(time.monotonic() - t0, 3),
              # the evidence of a completed stage (xfed.scheduler.progress): the last aggregate's digest
              "final_digest": getattr(agg, "last_digest", None) or tensors_digest(last_avg)}
    _write_output(ctx, result, history)
    return result


def _adopt(ctx, own: Params, shared: dict[str, Any]) -> Params:
    """The assist trainer's parameters win; say which of ours differed."""
    try:
        params = Params.model_validate({**shared, "round_delay_s": own.round_delay_s, "timeout_s": own.timeout_s})
    except ValidationError as err:
        raise JobError(f"{ctx.node_id}: parameters from {ctx.assist_id} are invalid: {err.errors()[0]['msg']}") from None
    mine = own.shared
    differing = sorted(k for k in params.shared if mine.get(k) != params.shared[k])
    if differing and ctx.stage.train_info.train_params:
        ctx.report("warning", {"message": f"{ctx.node_id}: using the assist trainer's "
                                          f"{', '.join(differing)} instead of this node's own"})
    return params


def _sleep(ctx, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not ctx.should_stop():
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


def _write_output(ctx, result: dict[str, Any], history: list[dict[str, Any]]) -> None:
    out = getattr(getattr(ctx.stage, "output", None), "path", None)
    if not out:
        return
    from xfed.config.placeholders import fill_placeholders
    from xfed.operators.outputs import claim_output_dir

    folder = Path(fill_placeholders(out, job_id=ctx.job_id, node_id=ctx.node_id, stage_id=str(ctx.stage_id)))
    claim_output_dir(folder, ctx)  # never another job's folder
    (folder / "horizontal_mean.json").write_text(json.dumps({"result": result, "rounds": history}, indent=1))
