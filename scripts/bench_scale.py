"""Real-size ChatGLM-6B on this machine: bf16 and THUDM int4, then a real-size federated job.

    python scripts/bench_scale.py [--json] [--parts int4,bf16,fed] [--layers 28] [--work work/scale]

Writes (once, cached under --work, never committed) a full-size ChatGLM-6B folder in THUDM's layout
with random fp16 weights (8 shards, 12.3 GB, the real config: hidden 4096, 28 layers, vocab 130528)
and its THUDM int4 twin (xfed's quantization_bit 4 on load, saved in THUDM's int4 layout). Each model
variant is measured in its own process: load time, peak RSS vs the loaded weight bytes, a LoRA r=8
(query_key_value) step at 64 and 256 tokens, a P-tuning v2 step (pre_seq_len 16) at 64 tokens, and 4
greedy tokens (tokens/s). `fed`: 2 int4 parties + the model-free assist trainer, OTP, 2 rounds of
2 steps, real processes and Redis: job time, per-round secure aggregation ms vs compute ms, peak RSS
per process. `--layers N` builds an N-layer model of the same width (a quick run of the script).
MEMORY: the bf16 variant peaks ~13.5 GB; the federated job ~2 x 5 GB. Check `free -g` first.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))
BASE = REPO.parent / "shared" / "fixtures" / "chatglm" / "base" / "chatglm-6b"
REAL = {"hidden_size": 4096, "inner_hidden_size": 16384, "num_attention_heads": 32, "num_layers": 28,
        "vocab_size": 130528, "max_sequence_length": 2048}
GB = 1e9


def log(msg: str) -> None:
    print(f"[bench_scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_peak() -> int:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it is not inherited from the parent across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------------------------------------------ folders
def write_fp16(folder: Path, layers: int, shards: int = 8) -> Path:
    """THUDM-layout ChatGLM-6B with random fp16 weights, shard by shard (peak ~ one shard)."""
    import torch

    if (folder / "pytorch_model.bin.index.json").is_file():
        return folder
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(BASE, tmp)
    cfg = json.loads((tmp / "config.json").read_text())
    cfg.update(REAL, num_layers=layers, quantization_bit=0)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    h, f, v = REAL["hidden_size"], REAL["inner_hidden_size"], REAL["vocab_size"]
    gen = torch.Generator().manual_seed(0)

    def rand(*shape, std):
        return torch.empty(*shape, dtype=torch.float16).normal_(0, std, generator=gen)

    groups: list[dict[str, Any]] = [{} for _ in range(shards)]
    groups[0]["transformer.word_embeddings.weight"] = lambda: rand(v, h, std=0.02)
    groups[-1]["transformer.final_layernorm.weight"] = lambda: torch.ones(h, dtype=torch.float16)
    groups[-1]["transformer.final_layernorm.bias"] = lambda: torch.zeros(h, dtype=torch.float16)
    groups[-1]["lm_head.weight"] = None  # tied: written with the embeddings' values below
    for i in range(layers):
        p = f"transformer.layers.{i}."
        g = groups[min(i * shards // layers, shards - 1)]
        for name, (o, n) in {"attention.query_key_value": (3 * h, h), "attention.dense": (h, h),
                             "mlp.dense_h_to_4h": (f, h), "mlp.dense_4h_to_h": (h, f)}.items():
            g[p + name + ".weight"] = (lambda o=o, n=n: rand(o, n, std=n ** -0.5))
            g[p + name + ".bias"] = (lambda o=o: torch.zeros(o, dtype=torch.float16))
        for ln in ("input_layernorm", "post_attention_layernorm"):
            g[p + ln + ".weight"] = lambda: torch.ones(h, dtype=torch.float16)
            g[p + ln + ".bias"] = lambda: torch.zeros(h, dtype=torch.float16)
    index: dict[str, Any] = {"metadata": {"total_size": 0}, "weight_map": {}}
    embeddings = None
    for s, group in enumerate(groups):
        fn = f"pytorch_model-{s + 1:05d}-of-{shards:05d}.bin"
        state = {}
        for key, make in group.items():
            state[key] = embeddings if make is None else make()
            if key == "transformer.word_embeddings.weight":
                embeddings = state[key]
        torch.save(state, tmp / fn)
        index["metadata"]["total_size"] += sum(t.numel() * 2 for t in state.values())
        index["weight_map"].update(dict.fromkeys(state, fn))
        if s > 0:
            del state
        log(f"  wrote {fn}")
    (tmp / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=1))
    tmp.rename(folder)
    return folder


def write_int4(fp16: Path, folder: Path) -> Path:
    """THUDM's int4 layout (chatglm-6b-int4): quantized on load, saved with THUDM's names, fp16 floats."""
    import torch

    from xfed.models import load_pretrained

    if (folder / "pytorch_model.bin").is_file():
        return folder
    if os.environ.get("BENCH_SCALE_INT4_CHILD") != "1":  # in a child: the parent stays small
        env = dict(os.environ, PYTHONPATH=str(REPO), BENCH_SCALE_INT4_CHILD="1")
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--write-int4", str(fp16), str(folder)],
                       env=env, check=True)
        return folder
    model, _ = load_pretrained(fp16, dtype="float16", quantization_bit=4)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("ice_text.model", "tokenizer_config.json"):
        shutil.copy(fp16 / name, tmp / name)
    cfg = json.loads((fp16 / "config.json").read_text())
    cfg.update(quantization_bit=4, quantization_embeddings=False)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    state = model.state_dict()
    state["lm_head.weight"] = state["transformer.word_embeddings.weight"]  # THUDM saves the tied tensor twice
    torch.save(state, tmp / "pytorch_model.bin")
    tmp.rename(folder)
    return folder


# ------------------------------------------------------------------------------------------ one variant
def measure(folder: Path, dtype: str) -> dict[str, Any]:
    """Run in a child process: load, LoRA steps, P-tuning step, generation; peak RSS."""
    import torch
    from peft import LoraConfig, PrefixTuningConfig, TaskType

    from xfed.models import load_pretrained, make_peft_model
    from xfed.models.quantization import packed_bytes

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    import xfed.models.chatglm  # noqa: F401  (imports are not the model's memory)
    base_rss = rss_peak()
    t0 = time.monotonic()
    model, _ = load_pretrained(folder, dtype=dtype)
    out: dict[str, Any] = {"load_s": round(time.monotonic() - t0, 1), "weight_gb": round(packed_bytes(model) / GB, 2),
                           "load_peak_rss_gb": round(rss_peak() / GB, 2), "import_rss_gb": round(base_rss / GB, 2)}
    out["peak_over_weights"] = round((out["load_peak_rss_gb"] - out["import_rss_gb"]) / out["weight_gb"], 2)
    partial = folder.parent / f"partial-{folder.name}.json"

    def note(key: str, value: Any) -> None:  # results so far, for a run cut short
        out[key] = value
        partial.write_text(json.dumps(out))
        log(f"  {folder.name}: {key} = {value}")

    note("load_s", out["load_s"])
    gen = torch.Generator().manual_seed(0)

    def batch(n: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(5, 20000, (1, n), generator=gen)
        ids[0, -2:] = torch.tensor([130001, 130004])  # [gMASK] <sop>: a ChatGLM-6B prompt end
        return {"input_ids": ids, "labels": ids.clone()}

    def step(peft_model, n: int) -> float:
        opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
        t = time.monotonic()
        peft_model(**batch(n)).loss.backward()
        opt.step()
        opt.zero_grad()
        return round(time.monotonic() - t, 2)

    lora = make_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=8, lora_alpha=16,
                                             target_modules=["query_key_value"]))
    lora.train()
    out["lora_trainable"] = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    for n in (64, 256):
        note(f"lora_step_{n}_s", step(lora, n))
    model = lora.unload()
    prefix = make_peft_model(model, PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=16))
    prefix.train()
    note("ptuning_step_64_s", step(prefix, 64))
    model = prefix.base_model
    model.eval()
    with torch.no_grad():
        ids = batch(16)["input_ids"]
        t = time.monotonic()
        new = model.generate(input_ids=ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        out["generate_tok_s"] = round((new.shape[1] - ids.shape[1]) / (time.monotonic() - t), 3)
    note("peak_rss_gb", round(rss_peak() / GB, 2))
    return out


def run_child(folder: Path, dtype: str) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(folder), "--dtype", dtype]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          check=False)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode} (its log is on stderr above)"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ federated
def federated(int4: Path, work: Path) -> dict[str, Any]:
    from bench_quality import encryption_section
    from local_federation import LaunchError, LocalFederation, RedisProcess

    trainers, assist = ["node-1", "node-2"], "assist_trainer"
    root = work / "fed"
    shutil.rmtree(root, ignore_errors=True)
    data = root / "data"
    data.mkdir(parents=True)
    for i, node in enumerate(trainers):
        words = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
        inst = [{"input": f"repeat {w}", "output": w if i == 0 else w.upper()} for w in words]
        (data / f"{node}.json").write_text(json.dumps({"instruction": "task", "instances": inst}))
    params = {"aggregation": {"agg_steps": 0.5, "weighting": "num_examples"},
              "encryption": encryption_section("otp"),
              "peft": {"LORA": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["query_key_value"]}},
              "trainer": {"per_device_train_batch_size": 2, "max_steps": 4, "learning_rate": 1e-4, "seed": 0,
                          "no_cuda": True, "warmup_steps": 0},
              "dataset": {"max_src_length": 24, "max_dst_length": 8}}
    out_dir = root / "output"

    def stage(identity: str, trainset: Path | None, train_params: dict) -> list[dict]:
        s = {"identity": identity, "model_info": {"name": "horizontal_chatglm", "config": {"dtype": "bfloat16"}},
             "input": {"pretrained_model": {"path": str(int4)}},
             "output": {"path": str(out_dir / "[JOB_ID]" / "[NODE_ID]")}, "train_info": {"train_params": train_params}}
        if trainset is not None:
            s["input"]["trainset"] = [{"type": "QA", "path": str(trainset)}]
        return [s]

    redis = RedisProcess(root / "redis")
    fed = LocalFederation(root / "config", "", trainers, assist=assist, namespace=f"bench_scale_{os.getpid()}")
    try:
        redis.start()
        fed.redis_address = redis.address
        fed.write_fed_conf()
        for n in trainers:
            fed.write_stage(n, stage("label_trainer", data / f"{n}.json", {"trainer": {"no_cuda": True}}))
        fed.write_stage(assist, stage("assist_trainer", None, params))
        fed.start()
        t0 = time.monotonic()
        job = fed.run_job(timeout=3600)
        seconds = time.monotonic() - t0
        if job.state.value != "SUCCESSFUL":
            raise LaunchError(f"job {job.job_id} {job.state.value}: {job.reason}")
    finally:
        fed.stop()
        redis.stop()
    result: dict[str, Any] = {"job_s": round(seconds, 1), "state": job.state.value, "per_node": {}}
    for node in [*trainers, assist]:
        m = json.loads((out_dir / job.job_id / node / "metrics.json").read_text())
        rounds = m.get("rounds") or []
        agg = [r.get("aggregate_ms", 0.0) for r in rounds]
        secagg = [r.get("mask_ms", 0.0) + r.get("unmask_ms", 0.0) for r in rounds]
        elapsed = float(m.get("elapsed_s") or 0.0) * 1000
        compute = (elapsed - sum(r.get("round_s", 0.0) * 1000 for r in rounds)) / max(len(rounds), 1)
        result["per_node"][node] = {
            "rounds": len(rounds), "secagg_ms_per_round": round(sum(secagg) / max(len(secagg), 1), 1),
            "aggregate_wait_ms_per_round": round(sum(agg) / max(len(agg), 1), 1),
            "compute_ms_per_round": round(compute, 1) if node != assist else 0.0,
            "peak_rss_gb": round(max((r.get("peak_rss_mb", 0) for r in rounds), default=0) * 2**20 / GB, 2),
            "final_loss": rounds[-1].get("train_loss") if rounds else None}
    result["final_adapter_generates"] = check_final(int4, out_dir / job.job_id / trainers[0] / "final")
    return result


def check_final(int4: Path, adapter: Path) -> str:
    """Load the job's final adapter on the int4 base and generate a few tokens (in a child process)."""
    code = ("import sys,torch; from xfed.models import load_pretrained, load_adapter; "
            "m,t=load_pretrained(sys.argv[1], dtype='bfloat16'); p=load_adapter(m, sys.argv[2]); "
            "ids=torch.tensor([t.encode('repeat alpha')]); "
            "o=p.generate(input_ids=ids, max_new_tokens=2, do_sample=False); print(o.shape[1]-ids.shape[1])")
    proc = subprocess.run([sys.executable, "-c", code, str(int4), str(adapter)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), check=False)
    return f"yes ({proc.stdout.strip()} tokens)" if proc.returncode == 0 else f"no: {proc.stderr.strip()[-200:]}"


# ------------------------------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="also print one JSON line")
    ap.add_argument("--parts", default="int4,bf16,fed", help="comma list of int4, bf16, fed")
    ap.add_argument("--layers", type=int, default=REAL["num_layers"])
    ap.add_argument("--work", type=Path, default=REPO / "work" / "scale")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--write-int4", nargs=2, type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.dtype)))
        return 0
    if args.write_int4:
        write_int4(*args.write_int4)
        return 0
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    work = args.work / f"chatglm-6b-{args.layers}l"
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    results: dict[str, Any] = {"layers": args.layers, "cpus": os.cpu_count(), "loadavg": [round(x, 1) for x in load]}
    t = time.monotonic()
    fp16 = write_fp16(work / "fp16", args.layers)
    log(f"fp16 folder ready ({time.monotonic() - t:.0f} s)")
    int4 = None
    if "int4" in parts or "fed" in parts:
        t = time.monotonic()
        int4 = write_int4(fp16, work / "int4")
        log(f"int4 folder ready ({time.monotonic() - t:.0f} s)")
    if "int4" in parts:
        log("measuring int4 (bf16 compute)")
        results["int4"] = run_child(int4, "bfloat16")
    if "bf16" in parts:
        log("measuring bf16")
        results["bf16"] = run_child(fp16, "bfloat16")
    if "fed" in parts:
        log("federated job: 2 int4 parties + model-free assist trainer, otp, 2 rounds")
        try:
            results["federated"] = federated(int4, args.work)
        except Exception as exc:  # noqa: BLE001 - reported in the table, not a traceback
            results["federated"] = {"error": " ".join(str(exc).split())[:400]}
    # the load at the end too: one-minute averages taken only at the start hid a busy machine mid-run
    results["loadavg_end"] = [round(x, 1) for x in os.getloadavg()]
    print_table(results)
    if args.json:
        print(json.dumps(results))
    return 0


def print_table(r: dict[str, Any]) -> None:
    print(f"ChatGLM-6B shape, {r['layers']} layers, random weights; {r['cpus']} CPUs, load avg {r['loadavg']} at start, "
          f"{r.get('loadavg_end')} at end")
    cols = ("load_s", "weight_gb", "load_peak_rss_gb", "peak_over_weights", "lora_step_64_s", "lora_step_256_s",
            "ptuning_step_64_s", "generate_tok_s", "peak_rss_gb")
    print("| variant | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name in ("bf16", "int4"):
        if name in r:
            v = r[name]
            print(f"| {name} | " + (" | ".join(str(v.get(c, "")) for c in cols) if "error" not in v
                                    else f"error: {v['error']}") + " |")
    fed = r.get("federated")
    if fed:
        if "error" in fed:
            print(f"federated: error: {fed['error']}")
            return
        print(f"federated job: {fed['state']} in {fed['job_s']} s; final adapter generates: "
              f"{fed['final_adapter_generates']}")
        print("| node | rounds | secagg ms/round | aggregate wait ms/round | compute ms/round | peak RSS GB |")
        print("|---|---|---|---|---|---|")
        for node, v in fed["per_node"].items():
            print(f"| {node} | {v['rounds']} | {v['secagg_ms_per_round']} | {v['aggregate_wait_ms_per_round']} | "
                  f"{v['compute_ms_per_round']} | {v['peak_rss_gb']} |")


if __name__ == "__main__":
    sys.exit(main())
