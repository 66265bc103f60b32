"""Learning-quality benchmark: base model vs local-only vs federated (plain, OTP) vs centralized on the demo task.

    python scripts/bench_quality.py [--peft LORA|PREFIX_TUNING] [--json] [--plot FILE.png] [--quick]

Uses the tiny GLM (work/tiny-glm, built when missing), the 3-party non-IID cipher task (by default the
bench's own `pure8` variant of it, or `--task demo` for work/demo_data) and the real horizontal_chatglm
operator for every arm, each with the same total number
of optimizer steps (S per party; the centralized adapter gets 3·S):

1. base model, no adapter;
2. each party alone: the operator's single-party path (one label trainer, no assist trainer) on its shard;
3. federated, plain aggregation: scheduler + assist trainer + three label-trainer daemons over a
   /usr/bin/redis-server on a free port (scripts/local_federation.py);
4. federated, OTP aggregation: the same seeds and configs as 3, masked sums;
5. centralized: the single-party path on the union of the three shards, 3·S steps.

Every arm is scored on the same held-out file (greedy decoding; exact match and character ROUGE-L, in
percent) and its per-round checkpoints are scored too, for the curves of `--plot`. The last line of
`--json` holds every arm's scores, `max_abs_diff_otp_vs_plain` over every adapter tensor of every
node, the targets and the measured wall time and load. Task and measured numbers: docs/QUALITY.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: the machine is shared, a tiny model gains nothing

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from local_federation import LaunchError, LocalFederation, RedisProcess  # noqa: E402
from make_demo_data import ciphers  # noqa: E402  (the demo's three ciphers, here over a-h)

from xfed.errors import ConfigError, XfedError  # noqa: E402

TRAINERS = ["node-1", "node-2", "node-3"]
ASSIST = "assist_trainer"
PROMPT_PATTERN = "{}：\n问：{}\n答："  # XFL's default, as make_demo_data.py renders the prompts
TARGETS = {"fed_vs_central_max_gap": 2.0, "fed_over_best_local_min": 15.0, "max_abs_diff_otp_vs_plain": 1e-6,
           "wall_s": 900.0}


@dataclass
class Settings:
    """What every arm shares: S steps per party, R rounds, batch, learning rate, seed, peft, scoring."""

    peft: str = "LORA"
    steps: int = 900
    rounds: int = 60
    batch: int = 16
    lr: float | None = None  # None: per peft (LoRA 3e-3 as DEMO_TASK.md measured, prefix 1e-1)
    # P-tuning v2: a prefix stores one key/value per (cipher, letter) it remaps, so it needs far more virtual
    # tokens than THUDM's defaults and a large rate (docs/QUALITY.md: 8 tokens at 1e-2 learn nothing here)
    pre_seq_len: int = 128
    prefix_projection: bool = False
    prefix_hidden_size: int | None = None  # the projection MLP's hidden size (None: peft's, the key/value width)
    prefix_init_std: float | None = None  # the prefix's initial N(0, std²) (None: nn.Embedding's N(0, 1))
    prefix_rounds: int = 180  # the default --rounds for a prefix: at lr 1e-1 parties drift apart in 15 steps
    lr_schedule: str = "cosine"  # TrainingArguments.lr_scheduler_type, the same for every arm
    seed: int = 42
    heldout_limit: int = 0  # 0: the whole held-out file
    job_timeout: float = 0.0  # seconds a federated job may take; 0: 2 s a round, at least 30 minutes
    max_new_tokens: int = 12
    curves: bool = True
    # OTP at 128 bits; plain aggregation sums on the same fixed-point grid (its default key_bitlength 128),
    # so the two federated arms are identical bit for bit (docs/QUALITY.md).
    otp_bits: int = 128
    dh_bits: int = 3072
    curve_points: int = 10  # rounds scored on the held-out set for the curves (evenly spaced, last included)
    # the federated arms' server side (docs/QUALITY.md "Server strategies, FedProx, DP")
    strategy: str = "fedavg"
    strategy_params: dict[str, Any] = field(default_factory=dict)
    fedprox_mu: float = 0.0
    dp_epsilon: float | None = None  # --dp EPS: client-level DP on the federated arms (weighting uniform)
    dp_delta: float = 1e-5
    dp_clip: float = 1.0
    arms: tuple[str, ...] = ("local", "centralized", "plain", "otp")
    # the parties' own optimizer in the federated arms (None: as every other arm, AdamW at learning_rate);
    # server-side adaptivity wants plain local SGD (Reddi et al. 2021), see docs/QUALITY.md
    local_optim: str | None = None
    local_lr: float | None = None
    local_trainer: dict[str, Any] = field(default_factory=dict)  # further TrainingArguments of the federated arms
    # further TrainingArguments of every arm (e.g. warmup_steps, adam_beta2), applied before local_trainer
    trainer: dict[str, Any] = field(default_factory=dict)
    # --federated-batch B: the parties take batches of B and steps*batch/B steps each, so the federation
    # processes the examples that the centralized arm does (3 parties x B ~ its batch) in as many rounds
    # as the centralized arm takes steps (docs/QUALITY.md: "equal compute")
    federated_batch: int | None = None

    @property
    def federated_steps(self) -> int:
        """Optimizer steps per party in the federated arms (S, or S*batch/B with --federated-batch B)."""
        if self.federated_batch is None:
            return self.steps
        return max(1, round(self.steps * self.batch / self.federated_batch))

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (3e-3 if self.peft == "LORA" else 1e-1)

    @property
    def federated_job_timeout(self) -> float:
        # a fixed 30 minutes stopped a healthy 2400-round job at round 2333 on a loaded 2-CPU machine
        return self.job_timeout or max(1800.0, 2.0 * self.rounds)

    def to_dict(self) -> dict[str, Any]:
        prefix = {} if self.peft == "LORA" else {"pre_seq_len": self.pre_seq_len,
                                                 "prefix_projection": self.prefix_projection,
                                                 "prefix_hidden_size": self.prefix_hidden_size,
                                                 "prefix_init_std": self.prefix_init_std}
        server = {"strategy": self.strategy, "strategy_params": self.strategy_params, "fedprox_mu": self.fedprox_mu,
                  "dp": None if self.dp_epsilon is None else {"epsilon": self.dp_epsilon, "delta": self.dp_delta,
                                                              "clip_norm": self.dp_clip}, "arms": list(self.arms),
                  "federated_optim": self.local_optim or "adamw_torch", "trainer": self.trainer,
                  "federated_trainer": self.local_trainer,
                  "federated_learning_rate": self.local_lr if self.local_lr is not None else self.learning_rate,
                  "federated_batch": self.federated_batch or self.batch, "federated_steps_per_party": self.federated_steps}
        return {"peft": self.peft, **prefix, **server, "steps_per_party": self.steps,
                "centralized_steps": len(TRAINERS) * self.steps,
                "rounds": self.rounds, "batch": self.batch, "learning_rate": self.learning_rate,
                "lr_schedule": self.lr_schedule, "seed": self.seed, "heldout_limit": self.heldout_limit, "max_new_tokens": self.max_new_tokens,
                "otp_key_bitlength": self.otp_bits, "dh_key_bitlength": self.dh_bits}


QUICK = {"steps": 6, "rounds": 2, "batch": 4, "heldout_limit": 12, "max_new_tokens": 8, "dh_bits": 2048}


# ---------------------------------------------------------------- configs
def peft_section(s: Settings) -> dict[str, Any]:
    if s.peft == "LORA":
        return {"LORA": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"}}
    given = {k: v for k, v in (("prefix_hidden_size", s.prefix_hidden_size), ("prefix_init_std", s.prefix_init_std))
             if v is not None}
    return {"PREFIX_TUNING": {"pre_seq_len": s.pre_seq_len, "prefix_projection": s.prefix_projection, **given}}


def encryption_section(kind: str, bits: int = 128, dh_bits: int = 3072) -> dict[str, Any]:
    if kind == "plain":
        return {"plain": {}}
    return {"otp": {"key_bitlength": bits, "key_exchange": {"key_bitlength": dh_bits, "optimized": True},
                    "csprng": {"name": "hmac_drbg", "method": "sha512"}}}


def agg_fraction(rounds: int) -> float:
    """agg_steps as a fraction that the operator's count_rounds (ceil(1/f)) turns back into `rounds`."""
    f = 1.0 / rounds
    if math.ceil(1 / f) != rounds:
        f = math.nextafter(f, 1.0)
    return f


def aggregation_section(s: Settings, federated: bool) -> dict[str, Any]:
    """agg_steps and weighting for every arm; strategy, FedProx and DP only for the federated arms."""
    section: dict[str, Any] = {"agg_steps": agg_fraction(s.rounds), "weighting": "num_examples"}
    if federated:
        if s.strategy != "fedavg" or s.strategy_params:
            section["strategy"] = {s.strategy: dict(s.strategy_params)}
        if s.fedprox_mu:
            section["fedprox_mu"] = s.fedprox_mu
        if s.dp_epsilon is not None:  # every party holds 600 examples: uniform = example weights here
            section.update(weighting="uniform", dp={"epsilon": s.dp_epsilon, "delta": s.dp_delta,
                                                    "clip_norm": s.dp_clip})
    return section


def train_params(s: Settings, encryption: str, steps: int, federated: bool = False) -> dict[str, Any]:
    """The authoritative train_params of a stage (the assist trainer's, or a lone party's)."""
    trainer: dict[str, Any] = dict(s.trainer)
    if federated and s.local_optim:
        trainer["optim"] = s.local_optim
    if federated:
        trainer.update(s.local_trainer)
    lr = s.local_lr if federated and s.local_lr is not None else s.learning_rate
    return {
        "aggregation": aggregation_section(s, federated),
        "encryption": encryption_section(encryption, s.otp_bits, s.dh_bits),
        "peft": peft_section(s),
        "trainer": {"per_device_train_batch_size": s.federated_batch if federated and s.federated_batch else s.batch,
                    "max_steps": steps, "learning_rate": lr,
                    "lr_scheduler_type": s.lr_schedule, "warmup_steps": 0, "weight_decay": 0.0, "seed": s.seed,
                    "no_cuda": True, **trainer},
        "dataset": {"max_src_length": 40, "max_dst_length": s.max_new_tokens, "prompt_pattern": PROMPT_PATTERN},
    }


def stage(identity: str, model: Path, out: Path, params: dict[str, Any], trainsets: list[Path]) -> list[dict]:
    s: dict[str, Any] = {"identity": identity, "model_info": {"name": "horizontal_chatglm"},
                         "input": {"pretrained_model": {"path": str(model)}},
                         "output": {"path": str(out / "[JOB_ID]" / "[NODE_ID]")},
                         "train_info": {"train_params": params}}
    if trainsets:
        s["input"]["trainset"] = [{"type": "QA", "path": str(p)} for p in trainsets]
    return [s]


# ---------------------------------------------------------------- assets
def ensure_assets(model: Path, data: Path | None, default_model: Path, default_data: Path) -> None:
    """Build the default tiny model / demo data when missing; a user-given folder must exist."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if not (model / "config.json").is_file():
        if model.resolve() != default_model.resolve():
            raise ConfigError(f"--model: {model} has no config.json (build one: python scripts/make_tiny_model.py --out DIR)")
        log(f"building the tiny model in {model} (~1 min)")
        subprocess.run([sys.executable, str(HERE / "make_tiny_model.py"), "--out", str(model)], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    if data is None:  # a task the script writes itself
        return
    needed = [f"{n}.json" for n in TRAINERS] + ["heldout.json"]
    if not all((data / f).is_file() for f in needed):
        if data.resolve() != default_data.resolve():
            missing = next(f for f in needed if not (data / f).is_file())
            raise ConfigError(f"--data: {data / missing} is missing (build it: python scripts/make_demo_data.py --out DIR)")
        log(f"building the demo data in {data}")
        subprocess.run([sys.executable, str(HERE / "make_demo_data.py"), "--out", str(data)], check=True, env=env,
                       stdout=subprocess.DEVNULL)


# A bench-specific variant of the demo task (--task pure8): the same three ciphers over an 8-letter alphabet
# (a map of 8 letters is learned in fewer steps than one of 26) and pure label skew (each party holds only
# its own cipher, so no party alone can learn the other two; see docs/QUALITY.md for why).
PURE8_LETTERS = "abcdefgh"


def write_pure8_data(folder: Path, seed: int = 0, n_train: int = 600, n_heldout_per_skill: int = 50) -> Path:
    """node-{1,2,3}.json (600 examples of one cipher each) and a balanced heldout.json, XFL QA, unique words."""
    skills, rng, used = ciphers(PURE8_LETTERS), random.Random(seed), set()
    parties = dict(zip(TRAINERS, ["shift", "back", "mirror"], strict=True))

    def instance(skill: str) -> dict[str, str]:
        while True:
            word = "".join(rng.choice(PURE8_LETTERS) for _ in range(6))
            if word not in used:
                used.add(word)
                return {"input": f"{skill} {word}", "output": skills[skill](word), "skill": skill}

    held = [instance(s) for s in [*skills] * n_heldout_per_skill]  # held-out words drawn first: never trained on
    rng.shuffle(held)
    shards = {"heldout": held, **{n: [instance(parties[n]) for _ in range(n_train)] for n in TRAINERS}}
    folder.mkdir(parents=True, exist_ok=True)
    for name, instances in shards.items():
        qa = {"id": name, "name": "ciphers over abcdefgh", "instruction": "text", "instances": instances}
        (folder / f"{name}.json").write_text(json.dumps(qa, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return folder


def log(message: str) -> None:
    print(f"[bench_quality {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- scoring
class Scorer:
    """Greedy exact match / character ROUGE-L (percent) on the held-out file, for any adapter folder."""

    def __init__(self, model_dir: Path, heldout: Path, s: Settings):
        from xfed.operators.horizontal_chatglm import inference

        self.inference, self.model_dir, self.s = inference, model_dir, s
        self.base, self.tokenizer = inference.load_for_inference(model_dir)
        params = {"prompt_pattern": PROMPT_PATTERN, "max_src_length": 40}
        pairs = inference.read_eval_pairs(heldout, self.base, self.tokenizer, params)
        self.pairs = pairs[: s.heldout_limit] if s.heldout_limit else pairs

    def __call__(self, adapter_dir: Path | None) -> dict[str, float]:
        model = self.base
        if adapter_dir is not None:
            model, _ = self.inference.load_for_inference(self.model_dir, adapter_dir)
        r = self.inference.evaluate_pairs(model, self.tokenizer, self.pairs, self.s.max_new_tokens)
        return {"exact_match": round(100 * r["exact_match"], 2), "rouge_l": round(100 * r["rouge_l"], 2)}


# ---------------------------------------------------------------- arms
@dataclass
class Arm:
    """One trained arm: where its outputs are, its final scores and per-round curves."""

    name: str
    label: str
    steps: int
    nodes: dict[str, Path] = field(default_factory=dict)  # node -> output folder (final/, checkpoint-k/, metrics.json)
    scores: dict[str, float] = field(default_factory=dict)
    curve: list[float] = field(default_factory=list)  # held-out exact match after each round
    seconds: float = 0.0

    def metrics(self, node: str) -> dict[str, Any]:
        return json.loads((self.nodes[node] / "metrics.json").read_text())


def run_alone(name: str, node: str, model: Path, trainsets: list[Path], params: dict[str, Any], root: Path) -> Path:
    """The operator's single-party path (one label trainer, no assist trainer), in this process."""
    from xfed.config import load_fed_conf, load_stages
    from xfed.node.context import StageContext
    from xfed.operators.horizontal_chatglm import operator

    config, out = root / name / "config", root / name / "output"
    config.mkdir(parents=True, exist_ok=True)
    fed = {"fed_info": {"scheduler": {"scheduler": "localhost:0"}, "trainer": {node: "localhost:0"}},
           "redis_server": "embedded", "redis": {"namespace": "bench_quality"}}
    (config / "fed_conf.json").write_text(json.dumps(fed, indent=1))
    (config / f"trainer_config_{node}.json").write_text(json.dumps(stage("label_trainer", model, out, params, trainsets),
                                                                   indent=1))
    ctx = StageContext(job_id=name, stage_id=0, attempt=0, node_id=node, identity="label_trainer",
                       stage=load_stages(config, node)[0], fed=load_fed_conf(config), trainer_ids=[node],
                       assist_id=None, comm=None, work_dir=root / name / "work")
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    result = operator.run(ctx)
    return Path(result["final"]).parent


def run_federated(s: Settings, model: Path, shards: dict[str, Path], root: Path) -> list[Arm]:
    """Plain then OTP jobs (those in s.arms) on one federation (same daemons, same seeds)."""
    redis = RedisProcess(root / "redis")
    fed = LocalFederation(root / "federation" / "config", "", TRAINERS, assist=ASSIST,
                          namespace=f"bench_quality_{os.getpid()}")
    out = root / "federation" / "output"
    arms = []
    try:
        redis.start()
        fed.redis_address = redis.address
        fed.write_fed_conf()
        local = {"trainer": {"per_device_train_batch_size": s.federated_batch or s.batch, "no_cuda": True}}
        for n in TRAINERS:
            fed.write_stage(n, stage("label_trainer", model, out, local, [shards[n]]))
        fed.start()
        for kind in [k for k in ("plain", "otp") if k in s.arms]:
            fed.write_stage(ASSIST, stage("assist_trainer", model, out, train_params(s, kind, s.federated_steps, True), []))
            t0 = time.monotonic()
            log(f"federated {kind}: job started ({len(TRAINERS)} parties x {s.federated_steps} steps, {s.rounds} rounds)")
            job = fed.run_job(timeout=s.federated_job_timeout)
            if job.state.value != "SUCCESSFUL":
                raise LaunchError(f"federated {kind} job {job.job_id} {job.state.value}: {job.reason}")
            arm = Arm(f"federated_{kind}", f"federated, {kind} aggregation", s.federated_steps,
                      nodes={n: out / job.job_id / n for n in [*TRAINERS, ASSIST]}, seconds=time.monotonic() - t0)
            log(f"federated {kind}: job {job.job_id} done in {arm.seconds:.0f} s")
            arms.append(arm)
    finally:
        fed.stop()
        redis.stop()
    return arms


def max_abs_diff(a: Arm, b: Arm, which: str = "final") -> float:
    """Largest |a - b| over every tensor of every node's `which` adapter (all adapter parameters)."""
    import numpy as np
    from safetensors.numpy import load_file

    worst = 0.0
    for node, folder in a.nodes.items():
        files = sorted(p.name for p in (folder / which).glob("*.safetensors"))
        if not files:
            raise ConfigError(f"{folder / which}: no adapter tensors")
        for name in files:
            x, y = load_file(str(folder / which / name)), load_file(str(b.nodes[node] / which / name))
            if sorted(x) != sorted(y):
                raise ConfigError(f"{node}: {name} holds different tensors under plain and otp")
            for key in x:
                worst = max(worst, float(np.max(np.abs(x[key].astype(np.float64) - y[key].astype(np.float64)),
                                               initial=0.0)))
    return worst


def curve_rounds(rounds: int, points: int) -> list[int]:
    """`points` rounds evenly spaced over 1..rounds, the last one always included."""
    if points >= rounds:
        return list(range(1, rounds + 1))
    return sorted({max(1, round(rounds * (i + 1) / points)) for i in range(points)})


def score_curve(scorer: Scorer, folder: Path, rounds: list[int]) -> list[float]:
    return [scorer(folder / f"checkpoint-{k}")["exact_match"] for k in rounds]


def loss_curve(metrics: dict[str, Any]) -> list[float | None]:
    return [r.get("train_loss") for r in metrics.get("rounds", [])]


# ---------------------------------------------------------------- reporting
def summary(s: Settings, arms: list[Arm], base: dict[str, float], diff: float | None, wall: float,
            loads: list[float]) -> dict[str, Any]:
    """The JSON result; a target is judged only when the arms it compares were run (--arms)."""
    by = {a.name: a for a in arms}
    local = {a.name: a.scores for a in arms if a.name.startswith("local_")}
    fed = by["federated_plain"].scores["exact_match"] if "federated_plain" in by else None
    central = by["centralized"].scores["exact_match"] if "centralized" in by else None
    measured: dict[str, Any] = {"wall_s": round(wall, 1)}
    met: dict[str, bool] = {"under_15_min": wall <= TARGETS["wall_s"]}
    if fed is not None and central is not None:
        measured["fed_vs_central_gap"] = round(central - fed, 2)
        met["fed_within_2_of_central"] = measured["fed_vs_central_gap"] <= TARGETS["fed_vs_central_max_gap"]
    if fed is not None and local:
        measured["fed_over_best_local"] = round(fed - max(v["exact_match"] for v in local.values()), 2)
        met["fed_15_over_best_local"] = measured["fed_over_best_local"] >= TARGETS["fed_over_best_local_min"]
    if diff is not None:
        measured["max_abs_diff_otp_vs_plain"] = diff
        met["otp_equals_plain"] = diff <= TARGETS["max_abs_diff_otp_vs_plain"]
    order = [a.name for a in arms if a.name.startswith("local_")] + [
        n for n in ("federated_plain", "federated_otp", "centralized") if n in by]
    federated_nodes = next((a.metrics(ASSIST) for a in arms if a.name.startswith("federated")), {})
    dp_spent = (federated_nodes.get("rounds") or [{}])[-1].get("dp_epsilon") if federated_nodes else None
    return {
        "bench": "quality", "settings": s.to_dict(),
        "arms": {"base": base, **{n: by[n].scores for n in order}},
        "steps": {a.name: a.steps for a in arms},
        "curves": {a.name: a.curve for a in arms if a.curve},
        "arm_seconds": {a.name: round(a.seconds, 1) for a in arms},
        "max_abs_diff_otp_vs_plain": diff, "dp_epsilon_spent": dp_spent,
        "targets": TARGETS, "measured": measured, "targets_met": met,
        "wall_s": round(wall, 1), "cpu_s": cpu_seconds(), "cpus": os.cpu_count(),
        "load_avg_1m": {"min": round(min(loads), 2), "mean": round(sum(loads) / len(loads), 2),
                        "max": round(max(loads), 2)},
    }


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and every finished descendant (daemons, stage processes)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 1)


def table(result: dict[str, Any], arms: list[Arm]) -> str:
    labels = {"base": "base model (no adapter)", **{a.name: a.label for a in arms}}
    steps = {"base": 0, **{a.name: a.steps for a in arms}}
    lines = [f"{'arm':<44} {'exact match':>11} {'ROUGE-L':>8} {'steps':>6}", "-" * 72]
    for name, sc in result["arms"].items():
        lines.append(f"{labels[name]:<44} {sc['exact_match']:>11.1f} {sc['rouge_l']:>8.1f} {steps[name]:>6}")
    m, met = result["measured"], result["targets_met"]
    lines.append("-" * 72)
    if "fed_vs_central_gap" in m:
        lines.append(f"federated plain vs centralized: {-m['fed_vs_central_gap']:+.1f} points (target within 2)"
                     f" {'ok' if met['fed_within_2_of_central'] else 'MISSED'}")
    if "fed_over_best_local" in m:
        lines.append(f"federated plain over best local-only party: {m['fed_over_best_local']:+.1f} points "
                     f"(target >= 15) {'ok' if met['fed_15_over_best_local'] else 'MISSED'}")
    if "max_abs_diff_otp_vs_plain" in m:
        lines.append(f"max |otp - plain| over all adapter parameters: {m['max_abs_diff_otp_vs_plain']:.3g}"
                     f" (target <= 1e-6) {'ok' if met['otp_equals_plain'] else 'MISSED'}")
    settings = result["settings"]
    lines.append(f"federated: parties {settings['federated_optim']} lr {settings['federated_learning_rate']} "
                 f"batch {settings['federated_batch']} "
                 f"{json.dumps(settings['federated_trainer']) if settings['federated_trainer'] else ''}, "
                 f"server {settings['strategy']} {json.dumps(settings['strategy_params'])}"
                 + (f", fedprox mu {settings['fedprox_mu']}" if settings["fedprox_mu"] else "")
                 + (f", dp {json.dumps(settings['dp'])} spent eps {result['dp_epsilon_spent']}" if settings["dp"] else ""))
    lines.append(f"wall time {result['wall_s']:.0f} s (target <= 900) {'ok' if met['under_15_min'] else 'MISSED'}, "
                 f"CPU time {result['cpu_s']:.0f} s; "
                 f"load average (1 min) {result['load_avg_1m']['min']}-{result['load_avg_1m']['max']} "
                 f"on {result['cpus']} CPUs")
    return "\n".join(lines)


def plot(path: Path, s: Settings, arms: list[Arm]) -> None:
    """Held-out exact match and training loss per round: each party alone, centralized, federated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {a.name: a for a in arms}
    colors = dict(zip(TRAINERS, ["tab:blue", "tab:orange", "tab:green"], strict=True))
    rounds, scored = list(range(1, s.rounds + 1)), curve_rounds(s.rounds, s.curve_points)
    fig, (ax_em, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.5))
    for n in TRAINERS:
        arm = by[f"local_{n}"]
        if arm.curve:
            ax_em.plot(scored, arm.curve, color=colors[n], marker="o", ms=3, label=f"{n} alone")
        ax_loss.plot(rounds, loss_curve(arm.metrics(n)), color=colors[n], label=f"{n} alone")
        ax_loss.plot(rounds, loss_curve(by["federated_plain"].metrics(n)), color=colors[n], ls=":",
                     label=f"{n} in the federation")
    central, fed = by["centralized"], by["federated_plain"]
    if central.curve:
        ax_em.plot(scored, central.curve, color="black", ls="--", marker="s", ms=3, label="centralized (3·S steps)")
    if fed.curve:
        ax_em.plot(scored, fed.curve, color="tab:red", lw=2.5, marker="D", ms=4, label="federated (plain)")
    ax_loss.plot(rounds, loss_curve(central.metrics("central")), color="black", ls="--", label="centralized")
    ax_em.set(title="held-out exact match after each round", xlabel="round", ylabel="exact match (%)",
              ylim=(-2, 102))
    ax_loss.set(title="training loss per round (mean over the round's steps)", xlabel="round", ylabel="loss",
                yscale="log")
    ax_em.legend(fontsize=8)
    ax_loss.legend(fontsize=7, ncol=2)
    for ax in (ax_em, ax_loss):
        ax.grid(alpha=0.3)
    fig.suptitle(f"xfed quality benchmark: {s.peft}, {s.steps} steps per party, {s.rounds} rounds, batch {s.batch}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peft", choices=("LORA", "PREFIX_TUNING"), default="LORA")
    ap.add_argument("--json", action="store_true", help="print one JSON line on stdout (the table goes to stderr)")
    ap.add_argument("--plot", type=Path, default=None, help="write a PNG of per-round curves here")
    ap.add_argument("--quick", action="store_true", help="tiny settings for a smoke test (numbers mean nothing)")
    ap.add_argument("--task", choices=("demo", "pure8"), default="pure8",
                    help="pure8 (default): a bench-specific variant of the demo task (8-letter alphabet, each party only its "
                         "own cipher) written under --out; demo: work/demo_data as make_demo_data.py writes it "
                         "(26 letters, 90/5/5 split)")
    ap.add_argument("--model", type=Path, default=REPO / "work" / "tiny-glm")
    ap.add_argument("--data", type=Path, default=REPO / "work" / "demo_data")
    ap.add_argument("--out", type=Path, default=None, help="keep every output here (default: a temporary folder)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per party (default 900)")
    ap.add_argument("--rounds", type=int, default=None, help="aggregation rounds (default 60: every 15 steps; "
                    "prefix 180: every 5)")
    ap.add_argument("--batch", type=int, default=None, help="per-party batch size (default 16)")
    ap.add_argument("--lr", type=float, default=None, help="learning rate (default LoRA 3e-3, prefix 1e-1)")
    ap.add_argument("--pre-seq-len", type=int, default=None, help="--peft PREFIX_TUNING: virtual tokens (default 128)")
    ap.add_argument("--prefix-projection", action="store_true", help="--peft PREFIX_TUNING: reparametrise through "
                    "THUDM's MLP (default off)")
    ap.add_argument("--prefix-hidden-size", type=int, default=None, help="--prefix-projection: the MLP's hidden "
                    "size (default: peft's, the key/value width: 64 on the tiny model)")
    ap.add_argument("--prefix-init-std", type=float, default=None, help="--peft PREFIX_TUNING: draw the initial "
                    "prefix from N(0, STD²) (default: nn.Embedding's N(0, 1), as THUDM)")
    ap.add_argument("--lr-schedule", default="cosine", choices=["constant", "linear", "cosine"],
                    help="learning-rate schedule of every arm (default cosine: a constant rate leaves the "
                         "federation oscillating late in training, docs/QUALITY.md)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--strategy", default="fedavg", help="server strategy of the federated arms: fedavg (default), "
                    "fedavgm, fedadam, fedyogi, fedadagrad")
    ap.add_argument("--strategy-params", default="{}", help='its parameters as JSON, e.g. \'{"server_lr": 0.03}\'')
    ap.add_argument("--fedprox-mu", type=float, default=0.0, help="FedProx mu of the federated arms (default 0: off)")
    ap.add_argument("--dp", type=float, default=None, metavar="EPS", help="client-level DP on the federated arms: "
                    "total epsilon over the job (weighting uniform)")
    ap.add_argument("--dp-delta", type=float, default=1e-5)
    ap.add_argument("--dp-clip", type=float, default=1.0, help="--dp: L2 clip norm C of a party's round delta")
    ap.add_argument("--local-optim", default=None, help="the parties' optimizer in the federated arms "
                    "(TrainingArguments.optim, e.g. sgd; default: AdamW like every arm)")
    ap.add_argument("--local-lr", type=float, default=None, help="the parties' learning rate in the federated arms "
                    "(default --lr)")
    ap.add_argument("--local-trainer", default="{}", help="further TrainingArguments of the federated arms' "
                    'parties as JSON, e.g. \'{"adam_epsilon": 0.001}\'')
    ap.add_argument("--trainer", default="{}", help="further TrainingArguments of every arm as JSON, e.g. "
                    '\'{"warmup_steps": 60, "adam_beta2": 0.99}\' (the federated arms\' --local-trainer overrides it)')
    ap.add_argument("--federated-batch", type=int, default=None, metavar="B",
                    help="the federated arms' per-party batch; each party then takes steps*batch/B steps (equal "
                         "examples: with B ~ batch/3 the federation takes as many rounds as the centralized arm steps)")
    ap.add_argument("--arms", default="local,centralized,plain,otp",
                    help="comma-separated subset of local, centralized, plain, otp (default all)")
    ap.add_argument("--heldout-limit", type=int, default=None, help="score only the first N held-out examples")
    ap.add_argument("--job-timeout", type=float, default=None, help="seconds a federated job may take before the "
                    "bench gives up on it (default: 2 s a round, at least 1800)")
    ap.add_argument("--no-curves", action="store_true", help="score only the final adapters (faster)")
    return ap.parse_args(argv)


def json_object(option: str, text: str) -> dict[str, Any]:
    """A JSON object of TrainingArguments given on the command line (a clear error otherwise)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{option}: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{option}: expected a JSON object of TrainingArguments")
    return value


def settings_from(args: argparse.Namespace) -> Settings:
    from xfed.aggregation.strategy import STRATEGIES, make_strategy

    try:
        strategy_params = json.loads(args.strategy_params)
        make_strategy(args.strategy, strategy_params, rounds=1)  # validation only
    except ValueError as exc:  # json's and pydantic's errors are ValueErrors
        raise ConfigError(f"--strategy {args.strategy} --strategy-params: {str(exc).splitlines()[0]}") from None
    except XfedError as exc:
        raise ConfigError(f"--strategy: {exc} (one of {', '.join(STRATEGIES)})") from None
    local_trainer, trainer = json_object("--local-trainer", args.local_trainer), json_object("--trainer", args.trainer)
    arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    unknown = sorted(set(arms) - {"local", "centralized", "plain", "otp"})
    if unknown or not arms:
        raise ConfigError(f"--arms: unknown arm(s) {unknown} (use local, centralized, plain, otp)")
    s = Settings(peft=args.peft, seed=args.seed, lr=args.lr, lr_schedule=args.lr_schedule, curves=not args.no_curves,
                 prefix_projection=args.prefix_projection, strategy=args.strategy, strategy_params=strategy_params,
                 fedprox_mu=args.fedprox_mu, dp_epsilon=args.dp, dp_delta=args.dp_delta, dp_clip=args.dp_clip,
                 arms=arms, local_optim=args.local_optim, local_lr=args.local_lr, local_trainer=local_trainer, trainer=trainer)
    prefix = {k: getattr(args, k) for k in ("pre_seq_len", "prefix_hidden_size", "prefix_init_std")
              if getattr(args, k) is not None}
    if prefix:
        from pydantic import ValidationError

        from xfed.operators.horizontal_chatglm.config import PrefixTuning

        try:  # the operator's own bounds, validation only
            PrefixTuning.model_validate(prefix)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ConfigError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
        for k, v in prefix.items():
            setattr(s, k, v)
    if args.job_timeout is not None:
        if args.job_timeout <= 0:
            raise ConfigError("--job-timeout: must be > 0")
        s.job_timeout = args.job_timeout
    if args.federated_batch is not None:
        if args.federated_batch < 1:
            raise ConfigError("--federated-batch: must be >= 1")
        s.federated_batch = args.federated_batch
    if args.peft == "PREFIX_TUNING":
        s.rounds = s.prefix_rounds
    if args.quick:
        for k, v in QUICK.items():
            setattr(s, k, v)
    for key in ("steps", "rounds", "batch", "heldout_limit"):
        value = getattr(args, key)
        if value is not None:
            if value < (0 if key == "heldout_limit" else 1):
                raise ConfigError(f"--{key.replace('_', '-')}: must be >= {0 if key == 'heldout_limit' else 1}")
            setattr(s, key, value)
    steps = {"local": s.steps, "centralized": len(TRAINERS) * s.steps, "plain": s.federated_steps,
             "otp": s.federated_steps}
    arm, fewest = min(((a, steps[a]) for a in arms), key=lambda x: x[1])
    if s.rounds > fewest:
        raise ConfigError(f"--rounds {s.rounds}: more rounds than the {arm} arm's steps ({fewest})")
    return s


def run(args: argparse.Namespace) -> int:
    s = settings_from(args)
    t0 = time.monotonic()
    loads = [os.getloadavg()[0]]
    model, data = args.model.resolve(), args.data.resolve()
    ensure_assets(model, data if args.task == "demo" else None, REPO / "work" / "tiny-glm", REPO / "work" / "demo_data")
    root = args.out.resolve() if args.out else Path(tempfile.mkdtemp(prefix="xfed-bench-quality-"))
    if root.exists() and args.out and any(root.iterdir()):
        raise ConfigError(f"--out: {root} is not empty (give a new folder)")
    root.mkdir(parents=True, exist_ok=True)
    if args.task == "pure8":
        data = write_pure8_data(root / "data", seed=0)
    shards = {n: data / f"{n}.json" for n in TRAINERS}
    try:
        import torch

        torch.set_num_threads(1)
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        scorer = Scorer(model, data / "heldout.json", s)
        base = scorer(None)
        log(f"base model: exact match {base['exact_match']:.1f} on {len(scorer.pairs)} held-out examples")
        arms: list[Arm] = []
        for n in TRAINERS if "local" in s.arms else []:
            started = time.monotonic()
            loads.append(os.getloadavg()[0])
            out = run_alone(f"local_{n}", n, model, [shards[n]], train_params(s, "plain", s.steps), root)
            arm = Arm(f"local_{n}", f"{n} alone (own shard)", s.steps, nodes={n: out}, seconds=time.monotonic() - started)
            arms.append(arm)
            log(f"local {n}: {s.steps} steps in {arm.seconds:.0f} s")
        if "centralized" in s.arms:
            started = time.monotonic()
            loads.append(os.getloadavg()[0])
            steps = len(TRAINERS) * s.steps
            out = run_alone("centralized", "central", model, list(shards.values()), train_params(s, "plain", steps), root)
            arms.append(Arm("centralized", "centralized (union of the shards)", steps, nodes={"central": out},
                            seconds=time.monotonic() - started))
            log(f"centralized: {steps} steps in {arms[-1].seconds:.0f} s")
        loads.append(os.getloadavg()[0])
        federated = run_federated(s, model, shards, root) if {"plain", "otp"} & set(s.arms) else []
        arms += federated
        loads.append(os.getloadavg()[0])
        diff = diff_round1 = None
        if len(federated) == 2:
            diff = max_abs_diff(federated[0], federated[1])
            diff_round1 = max_abs_diff(federated[0], federated[1], "checkpoint-1")
        started = time.monotonic()
        scored_curve = False
        for arm in arms:
            final_node = ASSIST if arm.name.startswith("federated") else next(iter(arm.nodes))
            arm.scores = scorer(arm.nodes[final_node] / "final")
            # with both federated arms the OTP adapter equals the plain one (checked above): one curve
            if s.curves and not (arm.name == "federated_otp" and scored_curve):
                arm.curve = score_curve(scorer, arm.nodes[final_node], curve_rounds(s.rounds, s.curve_points))
                scored_curve = scored_curve or arm.name == "federated_plain"
        log(f"scoring: {time.monotonic() - started:.0f} s")
        loads.append(os.getloadavg()[0])
        result = summary(s, arms, base, diff, time.monotonic() - t0, loads)
        result["max_abs_diff_otp_vs_plain_round1"] = diff_round1
        result["task"] = {"name": args.task, "data": str(data)}  # one aggregation from identical inputs
        result["curve_rounds"] = curve_rounds(s.rounds, s.curve_points)
        if args.plot:
            if set(s.arms) != {"local", "centralized", "plain", "otp"}:
                raise ConfigError("--plot needs every arm (leave --arms out)")
            plot(args.plot, s, arms)
            result["plot"] = str(args.plot)
        text = table(result, arms)
        if args.json:
            print(text, file=sys.stderr)
            print(json.dumps(result, sort_keys=True))
        else:
            print(text)
        return 0
    finally:
        if not args.out:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (XfedError, LaunchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
