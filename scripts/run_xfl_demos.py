"""Run XFL's own horizontal ChatGLM demos on xfed, unchanged apart from model, data and output paths.

    python scripts/run_xfl_demos.py [--demos 3party_lora,3party_ptuningv2,2party_lora_classic]
                                    [--work DIR] [--timeout S] [--json]

For each demo under ../shared/xfl_compat/ the script copies its config/ to DIR/<demo>/config and
rewrites exactly three kinds of key in the trainer configs: input.pretrained_model.path (the
ChatGLM-6B folder that ../shared/fixtures/chatglm/make_folder.py writes, built once), each
input.trainset[].path (XFL's poetry_small files, by file name) and output.path. XFL's fed_conf.json
names Redis at localhost:6379; the script starts its own redis-server on a free loopback port and
points `redis_server` there (a deployment address, not part of the job; printed separately).
Then it launches the scheduler and every node as `python xfed.py` subprocesses (stopped by pid),
runs `-c start --follow`, reads the job record (state, per-node results, warning events), loads
every node's final adapter with xfed.models.load_adapter on xfed.models.load_pretrained of the
model folder, generates a few tokens, and prints a table and one JSON line.

The launcher (`RedisProcess`, `Federation`) and `run_demo` are importable; the integration test
tests/integration/test_xfl_compat.py runs the same code.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
XFL = SHARED / "xfl_compat"
POETRY = XFL / "dataset" / "poetry_small"
FIXTURE = SHARED / "fixtures" / "chatglm"
DEFAULT_DEMOS = ("3party_lora", "3party_ptuningv2", "2party_lora_classic")
GENERATE_TOKENS = 6

for _path in (REPO, REPO / "scripts"):  # run as a file: find this checkout's xfed and the shared launcher
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from local_federation import LaunchError, RedisProcess  # noqa: E402
from local_federation import _stop as _stop_pid  # noqa: E402

# A demo could not be set up or run (one line; the script prints it and exits 2). The launcher's own
# errors are the same kind, so one `except DemoError` covers both.
DemoError = LaunchError


# -- config copies with only the paths rewritten ---------------------------------------------------
@dataclass
class Rewrite:
    file: str
    key: str
    old: Any
    new: Any


@dataclass
class PreparedDemo:
    name: str
    root: Path          # DIR/<demo>: config/, output/, logs/, stages/
    config: Path
    rewrites: list[Rewrite]
    deployment: list[Rewrite] = field(default_factory=list)  # redis_server: our own server, not the job

    @property
    def output(self) -> Path:
        return self.root / "output"


def build_model(dest: Path) -> Path:
    """The ChatGLM-6B folder make_folder.py writes from the v1-tiny fixture (built once, then reused)."""
    stamp = dest / "config.json"
    if stamp.is_file() and (dest / "pytorch_model.bin").is_file():
        return dest
    if not (FIXTURE / "make_folder.py").is_file():
        raise DemoError(f"{FIXTURE / 'make_folder.py'}: not found (the shared ChatGLM fixtures are needed)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, str(FIXTURE / "make_folder.py"), str(FIXTURE / "v1-tiny"), str(dest)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 or not stamp.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DemoError(f"make_folder.py failed for {dest}: {tail[0]}")
    for p in [dest, *dest.iterdir()]:  # the fixture's files are read-only; let a later run delete the folder
        p.chmod(p.stat().st_mode | 0o200)
    return dest


def truncate_data(dest: Path, max_instances: int, src: Path = POETRY) -> Path:
    """Copies of XFL's poetry files holding only their first `max_instances` instances (same layout)."""
    if max_instances < 1:
        raise DemoError(f"--max-instances: must be at least 1, got {max_instances}")
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.json")):
        doc = json.loads(f.read_text(encoding="utf-8"))
        doc["instances"] = list(doc.get("instances") or [])[:max_instances]
        (dest / f.name).write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return dest


def prepare_demo(name: str, work: Path, model_dir: Path, *, data_dir: Path = POETRY,
                 redis_address: str | None = None) -> PreparedDemo:
    """Copy XFL's config set of `name` to work/<name>/config and rewrite only the three path keys."""
    src = XFL / name / "config"
    if not (src / "fed_conf.json").is_file():
        known = sorted(p.name for p in XFL.iterdir() if (p / "config" / "fed_conf.json").is_file()) if XFL.is_dir() else []
        raise DemoError(f"{src}: no such XFL demo (known: {', '.join(known) or 'none'})")
    root = work / name
    config = root / "config"
    if config.exists():
        shutil.rmtree(config)
    # each run starts its own empty Redis, so job ids start at 1 again; xfed refuses to write into an
    # output folder holding an earlier job's files, and this folder is the script's scratch space
    shutil.rmtree(root / "output", ignore_errors=True)
    shutil.copytree(src, config)
    rewrites: list[Rewrite] = []
    for f in sorted(config.glob("trainer_config_*.json")):
        stages = json.loads(f.read_text(encoding="utf-8"))
        for i, stage in enumerate(stages):
            where = f"[{i}]" if len(stages) > 1 else ""
            inp = stage.setdefault("input", {})
            pre = inp.setdefault("pretrained_model", {})
            rewrites.append(Rewrite(f.name, f"{where}input.pretrained_model.path", pre.get("path"), str(model_dir)))
            pre["path"] = str(model_dir)
            for j, ds in enumerate(inp.get("trainset") or []):
                new = str(data_dir / Path(str(ds.get("path", ""))).name)
                rewrites.append(Rewrite(f.name, f"{where}input.trainset[{j}].path", ds.get("path"), new))
                ds["path"] = new
            out = stage.setdefault("output", {})
            new_out = str(root / "output" / "[JOB_ID]" / "[NODE_ID]")
            rewrites.append(Rewrite(f.name, f"{where}output.path", out.get("path"), new_out))
            out["path"] = new_out
        f.write_text(json.dumps(stages, ensure_ascii=False, indent=4), encoding="utf-8")
    deployment: list[Rewrite] = []
    if redis_address is not None:
        set_redis(config, redis_address, deployment)
    return PreparedDemo(name, root, config, rewrites, deployment)


def set_redis(config: Path, address: str, record: list[Rewrite]) -> None:
    """Point fed_conf.json's redis_server at our own server (XFL's says localhost:6379)."""
    f = config / "fed_conf.json"
    fed = json.loads(f.read_text(encoding="utf-8"))
    record[:] = [r for r in record if r.key != "redis_server"]
    record.append(Rewrite(f.name, "redis_server", fed.get("redis_server"), address))
    fed["redis_server"] = address
    f.write_text(json.dumps(fed, indent=4), encoding="utf-8")


def key_diff(prepared: PreparedDemo) -> list[str]:
    """What was rewritten, one `file: key: old -> new` line each (job paths, then deployment)."""
    lines = [f"  {r.file}: {r.key}: {r.old!r} -> {r.new!r}" for r in prepared.rewrites]
    lines += [f"  {r.file}: {r.key}: {r.old!r} -> {r.new!r}  (deployment: the script's own Redis)"
              for r in prepared.deployment]
    return lines


def changed_keys(original: Any, copy: Any, prefix: str = "") -> list[str]:
    """Every leaf key whose value differs between two JSON documents (dotted paths)."""
    if isinstance(original, dict) and isinstance(copy, dict):
        out: list[str] = []
        for k in sorted(set(original) | set(copy)):
            out += changed_keys(original.get(k), copy.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(original, list) and isinstance(copy, list) and len(original) == len(copy):
        out = []
        for i, (a, b) in enumerate(zip(original, copy, strict=True)):
            out += changed_keys(a, b, f"{prefix}[{i}]")
        return out
    return [] if original == copy else [prefix]


# -- processes ---------------------------------------------------------------------------------------
class Federation:
    """Scheduler + every node of a config folder as `python xfed.py` subprocesses (logs under logs/)."""

    def __init__(self, config: Path, root: Path) -> None:
        from xfed.config import load_fed_conf

        self.config, self.root = config, root
        self.fed = load_fed_conf(config)
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = root / "logs"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        path = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env.update(PYTHONPATH=path, OMP_NUM_THREADS="1",
                   XFED_WORK_DIR=str(self.root / "stages"), PYTHONUNBUFFERED="1")
        return env

    def spawn(self, name: str, *args: str) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, str(REPO / "xfed.py"), *args, "--config_path", str(self.config)],
                                    stdout=log, stderr=subprocess.STDOUT, env=self.env(), cwd=self.root)
        self.procs[name] = proc
        return proc

    def start_all(self) -> None:
        self.spawn("scheduler", "-s")
        for node in self.fed.node_ids:
            if node == self.fed.assist_trainer_id:
                self.spawn(node, "-a")
            else:
                self.spawn(node, "-t", node)

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def log_tail(self, name: str, lines: int = 15) -> str:
        p = self.logs / f"{name}.log"
        return "\n".join(p.read_text(errors="replace").splitlines()[-lines:]) if p.exists() else ""

    def client(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(REPO / "xfed.py"), *args, "--config_path", str(self.config)],
                              capture_output=True, text=True, env=self.env(), cwd=self.root, timeout=timeout)

    def follow_job(self, timeout: float) -> tuple[int, str]:
        """`-c start --follow --wait-nodes`: (exit code, its output); a dead daemon or the timeout ends it."""
        self.logs.mkdir(parents=True, exist_ok=True)
        out_path = self.logs / "client.log"
        with open(out_path, "wb") as out:
            proc = subprocess.Popen([sys.executable, str(REPO / "xfed.py"), "-c", "start", "--follow",
                                     "--wait-nodes", "180", "--config_path", str(self.config)],
                                    stdout=out, stderr=subprocess.STDOUT, env=self.env(), cwd=self.root)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                dead = self.dead()
                if dead:
                    time.sleep(2)  # the scheduler may still record the failure; then the client ends
                    if proc.poll() is None:
                        raise DemoError(f"{dead[0]} exited with {self.procs[dead[0]].returncode}: "
                                        f"{self.log_tail(dead[0], 3)}")
                if time.monotonic() > deadline:
                    raise DemoError(f"job not finished after {timeout:g} s (logs: {self.logs})")
                time.sleep(0.2)
        finally:
            _stop_pid(proc)
        return proc.returncode, out_path.read_text(errors="replace")

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):  # nodes before the scheduler
            _stop_pid(self.procs[name])


# -- one demo ------------------------------------------------------------------------------------------
@dataclass
class AdapterCheck:
    node: str
    path: str
    loaded: bool
    generated: str = ""
    new_tokens: int = 0
    changes_logits: bool = False
    error: str = ""


@dataclass
class DemoResult:
    demo: str
    state: str
    job: str = ""
    seconds: float = 0.0        # job RUNNING -> end, as the job record says
    wall_s: float = 0.0         # from launching the processes to the adapters checked
    rounds: int | None = None
    reason: str = ""
    warnings: list[str] = field(default_factory=list)       # warning events of the job (node: message)
    result_warnings: dict[str, list[str]] = field(default_factory=dict)  # per node, in the job's node results
    adapters: list[AdapterCheck] = field(default_factory=list)
    adapter_max_diff: float | None = None  # largest difference between the nodes' final adapters
    rewritten: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what `-c validate` notes about XFL's keys (ignored ones)

    @property
    def adapters_ok(self) -> bool:
        return bool(self.adapters) and all(a.loaded and a.new_tokens > 0 for a in self.adapters)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["adapters_ok"] = self.adapters_ok
        return d


def job_status(fedn: Federation, job_id: str) -> dict[str, Any]:
    """The job record as a user reads it: `python xfed.py -c status JOB --json`."""
    proc = fedn.client("-c", "status", job_id, "--json")
    try:
        return json.loads(proc.stdout)
    except ValueError:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DemoError(f"-c status {job_id} --json: {tail[0]}") from None


def job_events(fed_conf: Any, job_id: str) -> list[dict[str, Any]]:
    """Every event of the job's stream (status, progress, metrics, warning, done ...), oldest first."""
    from xfed.broker.connection import connect
    from xfed.broker.keys import Keys
    from xfed.broker.streams import ControlStream

    r = connect(fed_conf, retry_s=5)
    try:
        stream = ControlStream(r, Keys(fed_conf.redis.namespace).job_events(job_id))
        return [e.msg for e in stream.read("0-0", count=100_000) if e.msg]
    finally:
        r.close()


def check_adapter(model_dir: Path, adapter: Path, node: str, prompt_ids: list[int]) -> AdapterCheck:
    """load_pretrained + load_adapter, then greedy tokens; also whether the adapter moves the logits."""
    import warnings

    import torch

    from xfed.models import load_adapter, load_pretrained

    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecation notes, not ours
    check = AdapterCheck(node=node, path=str(adapter), loaded=False)
    try:
        base, tokenizer = load_pretrained(model_dir)
        ids = torch.tensor([prompt_ids])
        with torch.no_grad():
            base_logits = base(input_ids=ids).logits[0, -1].clone()
        model = load_adapter(base, adapter)
        check.loaded = True
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1]
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=GENERATE_TOKENS,
                                 do_sample=False)
        new = out[0, ids.shape[1]:].tolist()
        check.new_tokens = len(new)
        check.generated = tokenizer.decode(new)
        check.changes_logits = bool((logits - base_logits).abs().max().item() > 1e-6)
    except Exception as exc:  # reported in the table; the script's exit code says it failed
        check.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return check


def first_prompt_ids(prepared: PreparedDemo, model_dir: Path) -> list[int]:
    """The first training prompt of the demo, tokenised exactly as training does (XFL's prompt_pattern)."""
    from xfed.config import load_stages
    from xfed.models import load_pretrained
    from xfed.operators.horizontal_chatglm import data

    fed_nodes = sorted(p.stem.removeprefix("trainer_config_") for p in prepared.config.glob("trainer_config_*.json"))
    params: dict[str, Any] = {}
    trainset: list[Any] = []
    for node in fed_nodes:
        stage = load_stages(prepared.config, node)[0]
        if stage.identity == "assist_trainer":
            params = dict(stage.train_info.train_params.get("dataset") or {})
        trainset = trainset or list(stage.input.trainset or [])
    model, tokenizer = load_pretrained(model_dir)
    examples = data.read_records(trainset, params)
    return list(data.build_prompts(examples[:1], tokenizer, params, model=model)[0][0])


def adapter_difference(paths: list[Path]) -> float | None:
    """Largest absolute difference between the nodes' saved final adapters (0 when they agree)."""
    from safetensors.numpy import load_file

    files = [p / "adapter_model.safetensors" for p in paths]
    if len(files) < 2 or not all(f.is_file() for f in files):
        return None
    ref = load_file(str(files[0]))
    worst = 0.0
    for f in files[1:]:
        other = load_file(str(f))
        if set(other) != set(ref):
            return float("inf")
        for k, v in ref.items():
            worst = max(worst, float(abs(v.astype("float64") - other[k].astype("float64")).max(initial=0.0)))
    return worst


def warning_line(event: dict[str, Any]) -> str:
    """'node: message' for a warning event (messages that already name their node are kept as they are)."""
    node, message = str(event.get("node")), str((event.get("data") or {}).get("message"))
    return message if message.startswith(f"{node}:") else f"{node}: {message}"


def run_demo(prepared: PreparedDemo, model_dir: Path, *, timeout: float = 1800.0, log=print) -> DemoResult:
    """Start Redis + scheduler + nodes for one prepared demo, run its job, check the adapters it saved."""
    result = DemoResult(prepared.name, "NOT RUN", rewritten=key_diff(prepared))
    t0 = time.monotonic()
    redis = RedisProcess(prepared.root / "redis")
    redis.start()
    fedn: Federation | None = None
    try:
        set_redis(prepared.config, redis.address, prepared.deployment)
        result.rewritten = key_diff(prepared)
        fedn = Federation(prepared.config, prepared.root)
        check = fedn.client("-c", "validate", "--strict")  # XFL's keys as they are, our paths: no complaint
        if check.returncode != 0:
            lines = [ln for ln in (check.stdout + check.stderr).splitlines() if ln.strip()]
            result.state, result.reason = "INVALID", f"-c validate: {lines[-1] if lines else check.returncode}"
            return result
        result.notes = [ln for ln in check.stderr.splitlines() if ln.startswith("note: ")]
        for line in result.notes:
            log(f"[{prepared.name}] validate {line}")
        fedn.start_all()
        log(f"[{prepared.name}] started redis (pid {redis.proc.pid}, {redis.address}), "
            + ", ".join(f"{n} (pid {p.pid})" for n, p in fedn.procs.items()))
        try:
            rc, output = fedn.follow_job(timeout)
        except DemoError as exc:
            result.state, result.reason = "ERROR", str(exc)
            return result
        job_id = next((line.strip() for line in output.splitlines() if line.strip()), "")
        if not job_id or " " in job_id:
            result.state, result.reason = "ERROR", f"client: {output.strip().splitlines()[-1:] or 'no output'}"
            return result
        result.job = job_id
        job, events = job_status(fedn, job_id), job_events(fedn.fed, job_id)
        result.state, result.reason = job["state"], job.get("reason") or ""
        if job.get("started") and job.get("ended"):
            result.seconds = round(float(job["ended"]) - float(job["started"]), 1)
        result.warnings = [warning_line(e) for e in events if e.get("type") == "warning"]
        finals: dict[str, Path] = {}
        for node, status in sorted(job["nodes"].items()):
            res = status.get("result") or {}
            result.result_warnings[node] = list(res.get("warnings") or [])
            if isinstance(res.get("rounds"), int):
                result.rounds = res["rounds"]
            if res.get("final"):
                finals[node] = Path(res["final"])
        if rc != 0 or result.state != "SUCCESSFUL":
            result.reason = result.reason or f"client exited {rc}"
            return result
        fedn.stop_all()  # the adapters are on disk; free the cores for the checks
        try:
            prompt = first_prompt_ids(prepared, model_dir)
        except Exception as exc:  # noqa: BLE001 - reported as the demo's failure, not a traceback
            result.reason = f"could not build a prompt to check the adapters: {type(exc).__name__}: {exc}"
            return result
        result.adapters = [check_adapter(model_dir, path, node, prompt) for node, path in finals.items()]
        result.adapter_max_diff = adapter_difference(list(finals.values()))
        return result
    finally:
        if fedn is not None:
            fedn.stop_all()
        redis.stop()
        result.wall_s = round(time.monotonic() - t0, 1)


# -- command line -----------------------------------------------------------------------------------
def print_table(results: list[DemoResult]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="XFL demos on xfed", title_justify="left")
    for col in ("demo", "state", "seconds", "wall s", "rounds", "warnings", "adapter loads", "nodes agree"):
        table.add_column(col)
    for r in results:
        loads = f"{sum(a.loaded and a.new_tokens > 0 for a in r.adapters)}/{len(r.adapters)}"
        agree = "-" if r.adapter_max_diff is None else f"max diff {r.adapter_max_diff:.2g}"
        table.add_row(r.demo, r.state, f"{r.seconds:.1f}", f"{r.wall_s:.1f}", str(r.rounds or "-"),
                      str(len(r.warnings)), loads, agree)
    Console(highlight=False, width=120).print(table)
    for r in results:
        if r.reason:
            print(f"{r.demo}: {r.reason}")
        for w in r.warnings:
            print(f"{r.demo}: warning {w}")
        for a in r.adapters:
            print(f"{r.demo}: {a.node} adapter {'loaded' if a.loaded else 'NOT loaded'}"
                  f"{', generated ' + repr(a.generated) if a.loaded else ''}"
                  f"{', moves logits' if a.changes_logits else ''}{' ' + a.error if a.error else ''}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demos", default=",".join(DEFAULT_DEMOS), help="comma-separated XFL demo names")
    ap.add_argument("--work", default=str(REPO / "work" / "xfl_demos"), help="work folder (configs, outputs, logs)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per demo job")
    ap.add_argument("--max-instances", type=int, default=None, metavar="N",
                    help="train on copies of XFL's data files cut to their first N instances (default: all)")
    ap.add_argument("--json", action="store_true", help="print only one JSON line")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    quiet = args.json
    from xfed.errors import XfedError

    def log(*parts: Any) -> None:
        if not quiet:
            print(*parts, flush=True)

    try:
        import torch

        torch.set_num_threads(1)
        demos = [d.strip() for d in args.demos.split(",") if d.strip()]
        if not demos:
            raise DemoError("--demos: no demo named")
        work = Path(args.work).resolve()
        model_dir = build_model(work / "chatglm-demo")
        log(f"model: {model_dir} (ChatGLM-6B layout from {FIXTURE / 'v1-tiny'})")
        data_dir = POETRY
        if args.max_instances is not None:
            data_dir = truncate_data(work / f"poetry_small_first{args.max_instances}", args.max_instances)
            log(f"data: XFL's poetry_small cut to the first {args.max_instances} instances per file in {data_dir}")
        results = []
        for name in demos:
            prepared = prepare_demo(name, work, model_dir, data_dir=data_dir)
            log(f"[{name}] config copied to {prepared.config}; rewritten keys:")
            for line in key_diff(prepared):
                log(line)
            log("  (every other key is XFL's, byte for byte in value; redis_server is set when Redis starts)")
            result = run_demo(prepared, model_dir, timeout=args.timeout, log=log)
            for line in result.rewritten[len(prepared.rewrites):]:
                log(line)
            log(f"[{name}] {result.state} in {result.seconds:.1f} s (wall {result.wall_s:.1f} s), job {result.job}")
            results.append(result)
    except (DemoError, XfedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not quiet:
        print_table(results)
    print(json.dumps({"demos": [r.to_dict() for r in results],
                      "ok": all(r.state == "SUCCESSFUL" and r.adapters_ok for r in results)}, ensure_ascii=False))
    return 0 if all(r.state == "SUCCESSFUL" and r.adapters_ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
