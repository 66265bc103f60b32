"""Several processes per party: a label trainer's stage as a torch DDP group (`model_info.config.nproc_per_node`).

The stage process is rank 0. It starts ranks 1..n-1 (`python -m xfed.operators.horizontal_chatglm.ddp_rank`,
in its own process group, so the daemon's TERM/KILL of the stage reaches every rank, and each rank dies
with rank 0), then all ranks join one `torch.distributed` group (gloo on CPU, NCCL on CUDA) over a
FileStore in the stage's work dir: nothing listens beyond loopback and no port is configured.

Only rank 0 talks to Redis (parameters, preflight, masks, uploads, downloads). What the other ranks need
from the federation reaches them as torch.distributed broadcasts from rank 0, in this order:
the effective train_params (JSON bytes), the plan (rounds, resume round), the initial adapter, then
after every round the aggregated mean (the trainable tensors, broadcast in place). Training itself is
the Trainer's own DDP: every rank gets 1/n of the party's data per epoch (DistributedSampler),
gradients are all-reduced, and an optimizer step (what `agg_steps` counts) is one step of the group.
Nothing received here is unpickled: JSON bytes and tensors of known names and shapes only.
"""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from xfed.errors import ConfigError, JobError

from .adapter_state import trainable_names
from .config import Params

if TYPE_CHECKING:
    from xfed.config import Stage

MAX_NPROC = 64
STAGE_FILE = "stage.json"  # in WORK_DIR/ddp/: written by rank 0 for the ranks it starts
STARTUP_TIMEOUT_S = float(os.environ.get("XFED_DDP_STARTUP_TIMEOUT", "600"))  # imports + joining, per rank


def nproc_of(stage: Stage, *, identity: str, node: str, cuda: bool) -> int:
    """`model_info.config.nproc_per_node` checked (1 when absent); ConfigError naming the key otherwise."""
    options = stage.model_info.config
    value = options.get("nproc_per_node", 1)
    where = f"{node}: model_info.config.nproc_per_node"
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_NPROC:
        raise ConfigError(f"{where}: {value!r} is not a whole number from 1 to {MAX_NPROC}")
    if value > 1 and identity != "label_trainer":
        raise ConfigError(f"{where}: {value} processes are for label trainers; the {identity} runs as one")
    if value > 1 and cuda and value > torch.cuda.device_count():
        raise ConfigError(f"{where}: {value} processes but this machine has {torch.cuda.device_count()} CUDA "
                          "device(s) (one rank per GPU)")
    return value


def wants_cuda(own: Params) -> bool:
    """Whether this party's Trainer will train on CUDA (training_arguments' rule, from its own params)."""
    return torch.cuda.is_available() and not own.trainer_kwargs().get("use_cpu")


def check_device(group: DdpGroup, trainer: Any, node: str) -> None:
    """The group's backend was chosen from the party's own params; the federation's must agree."""
    if trainer is not None and group.cuda == bool(trainer.args.use_cpu):
        raise ConfigError(f"{node}: model_info.config.nproc_per_node: the ranks were started for "
                          f"{'CUDA' if group.cuda else 'CPU'}, but the job's trainer settings train on "
                          f"{'CPU' if trainer.args.use_cpu else 'CUDA'}; set trainer.use_cpu in this party's config")


def _rank_env(rank: int, world: int) -> dict[str, str]:
    """What the Trainer (accelerate) reads to see a distributed CPU/GPU run; the group itself is ours."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}


class DdpGroup:
    """This process's place in the party's DDP group, and the broadcasts from rank 0."""

    def __init__(self, rank: int, world: int, *, cuda: bool) -> None:
        self.rank, self.world, self.cuda = rank, world, cuda
        self.workers: list[tuple[subprocess.Popen, Path]] = []  # rank 0: the ranks it started, with their logs

    @property
    def main(self) -> bool:
        return self.rank == 0

    # -- joining ----------------------------------------------------------------------------------
    @classmethod
    def start(cls, ctx: Any, world: int, *, cuda: bool, should_stop: Callable[[], bool]) -> DdpGroup:
        """Rank 0: start ranks 1..world-1, wait until each has done its imports, then form the group."""
        group = cls(0, world, cuda=cuda)
        folder = Path(ctx.work_dir) / "ddp"
        folder.mkdir(parents=True, exist_ok=True)
        store_path = folder / "store"
        store_path.unlink(missing_ok=True)  # a previous attempt's rendezvous must not be joined
        os.environ.update(_rank_env(0, world))
        # what a rank needs of the stage (its filled config, ids); the federation's part comes by broadcast
        (folder / STAGE_FILE).write_text(json.dumps({
            "stage": ctx.stage.model_dump(mode="json"), "job": str(ctx.job_id), "stage_id": int(ctx.stage_id),
            "attempt": int(ctx.attempt), "node": ctx.node_id, "identity": ctx.identity,
            "assist_id": ctx.assist_id, "trainer_ids": list(ctx.trainer_ids),
            "job_uid": ctx.job_uid, "cuda": cuda}))
        for rank in range(1, world):
            log_path = folder / f"rank-{rank}.log"
            cmd = [sys.executable, "-m", "xfed.operators.horizontal_chatglm.ddp_rank", "--work-dir",
                   str(ctx.work_dir), "--rank", str(rank), "--world", str(world), "--parent-pid", str(os.getpid())]
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **_rank_env(rank, world)}, close_fds=True)
            group.workers.append((proc, log_path))
        store = dist.FileStore(str(store_path), world)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        ready = [f"ready-{rank}" for rank in range(1, world)]
        while not store.check(ready):
            group.check_workers()
            if should_stop():
                raise JobError(f"{ctx.node_id}: job stopped while its DDP ranks were starting")
            if time.monotonic() > deadline:
                raise JobError(f"{ctx.node_id}: DDP ranks not ready after {STARTUP_TIMEOUT_S:g} s (logs in {folder})")
            time.sleep(0.1)
        group._join(store)
        return group

    @classmethod
    def join(cls, work_dir: Path, rank: int, world: int, *, cuda: bool) -> DdpGroup:
        """Ranks 1..n-1: say ready (imports done), then form the group with rank 0."""
        group = cls(rank, world, cuda=cuda)
        store = dist.FileStore(str(Path(work_dir) / "ddp" / "store"), world)
        store.set(f"ready-{rank}", "1")
        group._join(store)
        return group

    def _join(self, store: Any) -> None:
        if self.cuda:
            torch.cuda.set_device(self.rank)
        # a rank waits in a broadcast while rank 0 waits for the federation's round: as long as a round
        backend, timeout = ("nccl" if self.cuda else "gloo"), float(os.environ.get("XFED_ROUND_TIMEOUT", 6 * 3600))
        dist.init_process_group(backend, store=store, rank=self.rank, world_size=self.world,
                                timeout=datetime.timedelta(seconds=timeout + 3600))

    # -- broadcasts from rank 0 -------------------------------------------------------------------
    def share_json(self, obj: Any = None) -> Any:
        """Rank 0 sends `obj` (JSON), the others return what it sent."""
        device = torch.device("cuda", self.rank) if self.cuda else torch.device("cpu")
        data = json.dumps(obj).encode() if self.main else b""
        size = torch.tensor([len(data)], dtype=torch.int64, device=device)
        dist.broadcast(size, src=0)
        buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device) if self.main
               else torch.empty(int(size.item()), dtype=torch.uint8, device=device))
        dist.broadcast(buf, src=0)
        return obj if self.main else json.loads(bytes(buf.cpu().tolist()).decode())

    def share_trainable(self, peft_model: torch.nn.Module) -> None:
        """Every rank's trainable tensors become rank 0's (in place: optimizers keep their moments)."""
        params = dict(peft_model.named_parameters())
        with torch.no_grad():
            for name in trainable_names(peft_model):
                dist.broadcast(params[name].data, src=0)

    # -- rank 0's watch over the others ---------------------------------------------------------------
    def run(self, stage: Callable[[], Any]) -> Any:
        """Rank 0 runs the party's stage; the other ranks end with it (joined on success, killed otherwise)."""
        try:
            result = stage()
        except BaseException as err:
            try:  # a broken collective says little: name the rank that died, and its log
                self.check_workers()
            except JobError as dead:
                raise dead from err
            finally:
                self.close(ok=False)
            raise
        self.close(ok=True)
        return result

    def check_workers(self) -> None:
        for proc, log_path in self.workers:
            rc = proc.poll()
            if rc is not None:
                raise JobError(f"DDP rank {self.workers.index((proc, log_path)) + 1} (pid {proc.pid}) exited with "
                               f"{rc}{_last_line(log_path)} [log {log_path}]")

    def close(self, *, ok: bool) -> None:
        """End the group; rank 0 waits for the others (a failing rank fails the stage) or kills them."""
        if ok and dist.is_initialized():  # on failure the process exits: peers see the group break
            dist.barrier()
            dist.destroy_process_group()
        for i, (proc, log_path) in enumerate(self.workers, start=1):
            if not ok:
                proc.kill()
            try:
                rc = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
            if ok and rc != 0:
                raise JobError(f"DDP rank {i} (pid {proc.pid}) exited with {rc}{_last_line(log_path)} [log {log_path}]")
        self.workers = []


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return f"; last log line: {lines[-1][:300]}" if lines else ""


class FollowerCallback(TrainerCallback):
    """Ranks 1..n-1: at the steps where rank 0 runs a round, take its aggregated mean.

    Mirrors FederatedCallback's timing exactly (marked at the round's step end, taken at its log), so
    every rank is at the same point between the same two optimizer steps when the broadcast happens."""

    def __init__(self, group: DdpGroup, peft_model: torch.nn.Module, schedule: Any,
                 on_mean: Callable[[], None] | None = None) -> None:
        self.group, self.peft_model, self.schedule, self.on_mean = group, peft_model, schedule, on_mean
        self.rounds_done = 0
        self._pending: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        self._flush()
        round_idx = self.schedule.round_at(state.global_step)
        if round_idx is not None:
            self._pending = round_idx
            control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._flush()

    def on_train_end(self, args, state, control, **kwargs):
        self._flush()

    def _flush(self) -> None:
        if self._pending is not None:
            round_idx, self._pending = self._pending, None
            self.group.share_trainable(self.peft_model)
            if self.on_mean is not None:
                self.on_mean()
            self.rounds_done = round_idx
