"""CUDA paths on full-size random ChatGLM-6B and ChatGLM3-6B (run by scripts/gpu_check.sh; <= 5 min on one H100).

For each architecture (the real THUDM configs: 6.2 B / 6.2 B parameters, random weights built on the
GPU, no folder to write): a LoRA r=8 step in bf16 and in fp16 at 256 tokens; bitsandbytes nf4 QLoRA
(double quantization, bf16 compute) when bitsandbytes is installed; THUDM int4 (xfed's packed
QuantizedLinear, quantized with THUDM's GPU arithmetic) with a LoRA step; P-tuning v2 (pre_seq_len 16)
on the int4 base. Each line: step seconds and peak GPU memory. Then the THUDM int4 fixtures through
load_pretrained(device="cuda") against THUDM's reference logits, when ../shared is present. Then a
label trainer's DDP group (nproc_per_node 2): NCCL on 2 GPUs (skipped with one), rank 0's plan and
adapter broadcast, one DDP LoRA step, every rank's weights equal to rank 0's.
`--smoke`: the same steps on CPU with narrow 2-layer models (checks this script, not CUDA).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FIXTURES = REPO.parent / "shared" / "fixtures" / "chatglm"

V1 = {"model_type": "chatglm", "hidden_size": 4096, "inner_hidden_size": 16384, "num_attention_heads": 32,
      "num_layers": 28, "vocab_size": 130528, "max_sequence_length": 2048, "position_encoding_2d": True,
      "bos_token_id": 130004, "eos_token_id": 130005, "mask_token_id": 130000, "gmask_token_id": 130001,
      "pad_token_id": 3, "layernorm_epsilon": 1e-5}
V3 = {"model_type": "chatglm", "hidden_size": 4096, "ffn_hidden_size": 13696, "kv_channels": 128,
      "num_attention_heads": 32, "multi_query_attention": True, "multi_query_group_num": 2, "num_layers": 28,
      "padded_vocab_size": 65024, "seq_length": 8192, "layernorm_epsilon": 1e-5, "add_qkv_bias": True,
      "rmsnorm": True, "post_layer_norm": True, "add_bias_linear": False}


def build(arch: str, layers: int, device, dtype):
    import torch

    with torch.device(device):
        if arch == "chatglm-6b":
            from xfed.models.chatglm import ChatGLM6BForCausalLM, config_from_thudm
            model = ChatGLM6BForCausalLM(config_from_thudm(dict(V1, num_layers=layers))).to(dtype)
            return model, model.transformer.layers, "query_key_value"
        from transformers import GlmForCausalLM

        from xfed.models.chatglm3.config import glm_config_from_thudm
        from xfed.models.chatglm3.semantics import install_thudm_semantics
        model = GlmForCausalLM(glm_config_from_thudm(dict(V3, num_layers=layers), source="chatglm3-6b",
                                                     family="chatglm3")).to(dtype)
        install_thudm_semantics(model)
        return model, model.model.layers, ["q_proj", "k_proj", "v_proj"]


def to_int4(arch: str, model, layers, device) -> None:
    import torch

    from xfed.models.chatglm3.weights import NATIVE_QUANTIZED
    from xfed.models.quantization import V1_LINEARS, QuantizedLinear, replace_linears

    names = V1_LINEARS if arch == "chatglm-6b" else NATIVE_QUANTIZED
    qdtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32  # THUDM's GPU / CPU path
    for layer in layers:
        replace_linears(layer, names, lambda lin: QuantizedLinear.from_linear(lin, 4, qdtype))


def step(peft_model, tokens: int, device) -> tuple[float, float]:
    import torch

    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(5, 20000, (1, tokens), device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.monotonic()
    loss = peft_model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = 0.0
    if not torch.isfinite(loss):
        raise RuntimeError(f"loss {loss.item()} is not finite")
    return time.monotonic() - t, peak


def run_case(arch: str, case: str, layers: int, tokens: int, device) -> dict:
    import gc

    import torch
    from peft import LoraConfig, PrefixTuningConfig, TaskType

    from xfed.models import make_peft_model

    dtype = torch.float16 if case == "fp16 LoRA" else torch.bfloat16
    t0 = time.monotonic()
    if case == "bnb nf4 QLoRA":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            return {"arch": arch, "case": case, "skipped": "bitsandbytes is not installed on this machine"}
        from xfed.models.bnb import bits_and_bytes_config, prepare_for_kbit_training, quantize_linears
        model, layers_, targets = build(arch, layers, device, torch.bfloat16)
        cfg = bits_and_bytes_config({"load_in_4bit": True, "bnb_4bit_use_double_quant": True}, torch.bfloat16)
        quantize_linears(model, cfg, device)
        model = prepare_for_kbit_training(model)
    else:
        model, layers_, targets = build(arch, layers, device, dtype)
        if "int4" in case:
            to_int4(arch, model, layers_, device)
    build_s = time.monotonic() - t0
    if "P-tuning" in case:
        peft_cfg = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=16)
    else:
        peft_cfg = LoraConfig(task_type=TaskType.CAUSAL_LM, r=8, lora_alpha=16, target_modules=targets)
    peft_model = make_peft_model(model, peft_cfg)
    peft_model.train()
    step(peft_model, 16, device)  # warm-up (kernels, allocator)
    seconds, peak = step(peft_model, tokens, device)
    out = {"arch": arch, "case": case, "tokens": tokens, "build_s": round(build_s, 1), "step_s": round(seconds, 2),
           "peak_gpu_gib": round(peak, 2)}
    del peft_model, model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def fixture_checks(device) -> list[dict]:
    """THUDM int4 fixtures through load_pretrained on `device` vs THUDM's reference logits (README tolerances)."""
    import importlib.util

    import torch

    from xfed.models import load_pretrained

    out = []
    for name in ("v1-int4-tiny", "v3-int4-tiny"):
        if not (FIXTURES / name).is_dir():
            out.append({"fixture": name, "skipped": f"{FIXTURES / name} not present"})
            continue
        spec = importlib.util.spec_from_file_location("make_folder", FIXTURES / "make_folder.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        folder = Path("/tmp") / f"gpu_check_{name}"
        mod.build(str(FIXTURES / name), str(folder))
        ref = json.loads((FIXTURES / name / "reference.json").read_text())
        model, _ = load_pretrained(folder, device=device)
        f = ref["forward"]
        ids, mask = torch.tensor(f["input_ids"], device=device), torch.tensor(f["attention_mask"], device=device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float().cpu()
        probe = torch.tensor(ref["probe_ids"])
        worst = max((logits[b, row["positions"]][:, probe] - torch.tensor(row["probe"])).abs().max().item()
                    for b, row in enumerate(f["rows"]))
        out.append({"fixture": name, "max_probe_logit_diff": round(worst, 6), "ok": worst < 1e-3})
    return out


def ddp_rank(rank: int, world: int, store: str, cuda: bool) -> None:
    """One rank of the DDP check: xfed's DdpGroup (NCCL on CUDA, gloo in --smoke) shares a plan and rank 0's
    adapter, then one DDP LoRA step on different data per rank must leave every rank with equal weights."""
    import torch
    import torch.distributed as dist
    from peft import LoraConfig, TaskType

    from xfed.models import make_peft_model
    from xfed.operators.horizontal_chatglm.adapter_state import trainable_names
    from xfed.operators.horizontal_chatglm.ddp import DdpGroup

    group = DdpGroup(rank, world, cuda=cuda)
    group._join(dist.FileStore(store, world))
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    V3.update(hidden_size=128, ffn_hidden_size=384, kv_channels=32, num_attention_heads=4)
    model, _, targets = build("chatglm3-6b", 2, device, torch.bfloat16 if cuda else torch.float32)
    peft_model = make_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=8, target_modules=targets))
    names = trainable_names(peft_model)
    params = dict(peft_model.named_parameters())
    torch.manual_seed(100 + rank)  # every rank starts different: only the broadcast makes them equal
    with torch.no_grad():
        for n in names:
            params[n].normal_()
    t = time.monotonic()
    plan = group.share_json({"rounds": 3, "from": "rank 0"} if rank == 0 else None)
    group.share_trainable(peft_model)
    share_s = time.monotonic() - t

    def spread() -> float:  # the largest difference of any trainable tensor from rank 0's
        worst = 0.0
        for n in names:
            mine = params[n].detach().float()
            ref = mine.clone()
            dist.broadcast(ref, src=0)
            worst = max(worst, (mine - ref).abs().max().item())
        return worst

    after_share = spread()
    ddp = torch.nn.parallel.DistributedDataParallel(peft_model, device_ids=[rank] if cuda else None)
    opt = torch.optim.AdamW([params[n] for n in names], lr=1e-3)
    ids = torch.randint(5, 20000, (2, 32), device=device, generator=torch.Generator(device).manual_seed(rank))
    ddp(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    after_step = spread()
    if rank == 0:
        print(json.dumps({"ddp": {"backend": dist.get_backend(), "world": world, "plan": plan,
                                  "share_s": round(share_s, 3), "spread_after_share": after_share,
                                  "spread_after_step": after_step}}), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    if plan != {"rounds": 3, "from": "rank 0"} or after_share != 0.0 or after_step > 1e-6:
        sys.exit(1)


def ddp_check(device) -> dict:
    """2 ranks of a label trainer's DDP group (xfed.operators.horizontal_chatglm.ddp) on 2 GPUs, or gloo on CPU."""
    import os
    import subprocess
    import tempfile

    import torch

    cuda = device.type == "cuda"
    if cuda and torch.cuda.device_count() < 2:
        return {"case": "DDP 2 ranks", "skipped": f"needs 2 GPUs (one per rank), this machine has "
                                                  f"{torch.cuda.device_count()}"}
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "store")
        procs = [subprocess.Popen([sys.executable, __file__, "--ddp-rank", str(r), "--ddp-store", store]
                                  + ([] if cuda else ["--smoke"]), stdout=subprocess.PIPE, text=True,
                                  env={**os.environ, "PYTHONPATH": str(REPO)}) for r in range(2)]
        outs = [p.communicate(timeout=240)[0] for p in procs]
    lines = [ln for ln in outs[0].splitlines() if ln.startswith('{"ddp"')]
    if any(p.returncode for p in procs) or not lines:
        return {"case": "DDP 2 ranks", "error": f"exit codes {[p.returncode for p in procs]}; {outs[0][-300:]}"}
    return {"case": "DDP 2 ranks", **json.loads(lines[-1])["ddp"], "ok": True}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="run the steps on CPU with narrow 2-layer models (no CUDA check)")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--ddp-rank", type=int, default=None, help=argparse.SUPPRESS)  # one rank of the DDP check
    ap.add_argument("--ddp-store", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    if args.ddp_rank is not None:
        ddp_rank(args.ddp_rank, 2, args.ddp_store, cuda=torch.cuda.is_available() and not args.smoke)
        return 0

    if not torch.cuda.is_available() and not args.smoke:
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False): dry run, nothing measured; "
              "run scripts/gpu_check.sh on a CUDA machine (or --smoke to exercise the script on CPU)")
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cpu":  # the smoke run checks the script's logic: narrow models, same structure
        V1.update(hidden_size=128, inner_hidden_size=512, num_attention_heads=4, vocab_size=20480)
        V3.update(hidden_size=128, ffn_hidden_size=384, kv_channels=32, num_attention_heads=4)
    layers = args.layers or (28 if device.type == "cuda" else 2)
    tokens = args.tokens if device.type == "cuda" else 32
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU smoke run"
    print(f"gpu_check on {name}: {layers} layers, {tokens} tokens per step")
    print("| arch | case | step s | peak GPU GiB | build s |")
    print("|---|---|---|---|---|")
    results, failed = [], 0
    cases = ("bf16 LoRA", "fp16 LoRA", "bnb nf4 QLoRA", "THUDM int4 LoRA", "THUDM int4 P-tuning v2")
    for arch in ("chatglm-6b", "chatglm3-6b"):
        for case in cases:
            if device.type == "cpu" and case.startswith("bnb"):
                r = {"arch": arch, "case": case, "skipped": "bitsandbytes is CUDA-only here"}
            else:
                try:
                    r = run_case(arch, case, layers, tokens, device)
                except Exception as exc:  # noqa: BLE001 - one line per failed case, then the next
                    r = {"arch": arch, "case": case, "error": " ".join(str(exc).split())[:300]}
                    failed += 1
            results.append(r)
            if "step_s" in r:
                print(f"| {arch} | {case} | {r['step_s']} | {r['peak_gpu_gib']} | {r['build_s']} |", flush=True)
            else:
                print(f"| {arch} | {case} | {r.get('skipped') or 'ERROR: ' + r['error']} | | |", flush=True)
    for r in fixture_checks(device):
        results.append(r)
        print(f"fixture {r['fixture']} on {device.type}: " + (r.get("skipped") or
              f"max probe logit diff {r['max_probe_logit_diff']} ({'ok' if r['ok'] else 'FAIL'})"))
        failed += 0 if r.get("ok", True) else 1
    r = ddp_check(device)
    results.append(r)
    print(f"DDP 2 ranks on {device.type}: " + (r.get("skipped") or (f"ERROR: {r['error']}" if "error" in r else
          f"{r['backend']}, share {r['share_s']} s, spread after share {r['spread_after_share']}, "
          f"after a DDP step {r['spread_after_step']}")), flush=True)
    failed += 1 if "error" in r else 0
    print(json.dumps({"device": name, "results": results}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
