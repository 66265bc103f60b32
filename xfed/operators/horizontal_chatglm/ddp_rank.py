"""Rank 1..n-1 of a label trainer's DDP group: `python -m xfed.operators.horizontal_chatglm.ddp_rank`.

Started by rank 0 (the stage process, see ddp.py), never by hand. It trains beside rank 0 with the
Trainer's own DDP and never talks to Redis: its stage config comes from the file rank 0 wrote, the
federation's parameters, plan and every round's mean by broadcast from rank 0. It writes nothing into
the party's output folder (its own outputs go to a scratch folder in the work dir).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("xfed.ddp")


def _die_with_parent(parent_pid: int) -> None:
    """PDEATHSIG, plus a watch for the race where rank 0 died before prctl ran."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


@dataclass
class RankContext:
    """What `Party.setup` reads of a StageContext, without Redis (reports go to this rank's log)."""

    job_id: str
    stage_id: int
    attempt: int
    node_id: str
    identity: str
    stage: Any
    assist_id: str | None
    trainer_ids: list[str]
    work_dir: Path
    job_uid: str = ""
    fed: Any = None
    notes: list[str] = field(default_factory=list)

    def report(self, kind: str, data: dict) -> None:
        log.info("%s: %s", kind, data)

    def should_stop(self) -> bool:
        return False  # rank 0 watches the job; this rank ends with it (process group, PDEATHSIG)


def run(work_dir: Path, rank: int, world: int) -> int:
    from xfed.config import fill_placeholders
    from xfed.config.stage import Output, Stage

    from . import resume
    from .adapter_state import extract_trainable, save_adapter
    from .config import validated_params
    from .ddp import STAGE_FILE, DdpGroup, FollowerCallback
    from .party import set_threads
    from .party_stage import Party
    from .schedule import party_schedule

    set_threads()
    info = json.loads((work_dir / "ddp" / STAGE_FILE).read_text())
    group = DdpGroup.join(work_dir, rank, world, cuda=bool(info.get("cuda")))
    ok = False
    try:
        stage = Stage.model_validate(info["stage"])
        party_output = Path(fill_placeholders(stage.output.path, job_id=info["job"], node_id=info["node"],
                                              stage_id=info["stage_id"]))
        scratch = work_dir / "ddp" / f"rank-{rank}-output"  # never the party's folder: rank 0 writes that
        ctx = RankContext(job_id=info["job"], stage_id=info["stage_id"], attempt=info["attempt"],
                          node_id=info["node"], identity=info["identity"],
                          stage=stage.model_copy(update={"output": Output(path=str(scratch))}),
                          assist_id=info["assist_id"], trainer_ids=info["trainer_ids"],
                          work_dir=work_dir / "ddp" / f"rank-{rank}", job_uid=info["job_uid"])
        party = Party(ctx)
        party.setup(validated_params(group.share_json(), ctx.node_id))
        plan = group.share_json()
        group.share_trainable(party.peft_model)  # the initial (or resumed) global adapter
        rounds, start = int(plan["rounds"]), int(plan["start"])
        if party.proximal is not None:
            party.proximal.set_anchor(extract_trainable(party.peft_model))

        def on_mean() -> None:  # FedProx pulls towards the round's global adapter on every rank alike
            if party.proximal is not None:
                party.proximal.set_anchor(extract_trainable(party.peft_model))

        follower = FollowerCallback(group, party.peft_model, party_schedule(rounds, party.total_steps), on_mean)
        follower.rounds_done = start
        if start < rounds:
            party.trainer.add_callback(follower)
            party.trainer.train(resume_from_checkpoint=resume.trainer_checkpoint(ctx, party_output, start,
                                                                                  party.trainer))
        save_adapter(party.peft_model, scratch / "final")  # what this rank ended with (rank 0's, unless broken)
        log.info("rank %s of %s: trained through round %s of %s", rank, world, follower.rounds_done, rounds)
        ok = True
        return 0
    finally:
        group.close(ok=ok)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m xfed.operators.horizontal_chatglm.ddp_rank")
    p.add_argument("--work-dir", dest="work_dir", required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--parent-pid", type=int, default=0)
    args = p.parse_args(argv)
    if args.parent_pid:
        _die_with_parent(args.parent_pid)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s rank {args.rank} %(levelname)s %(message)s")
    try:
        code = run(Path(args.work_dir), args.rank, args.world)
    except BaseException:  # noqa: B036 - rank 0 reports the stage; this log says why
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
