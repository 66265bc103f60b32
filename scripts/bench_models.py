"""Benchmark: our ChatGLM-6B (v1) implementation against transformers' GlmForCausalLM at matched sizes.

    python scripts/bench_models.py [--json] [--hidden 512 --layers 4 --heads 8 --vocab 32000]
                                   [--batch 4 --seq 256 --new-tokens 32 --repeats 3] [--device cpu|cuda]

Measures, for each model in a fresh subprocess (so peak memory is its own):
  - train step: forward + backward of a batch (default 4 x 256 tokens) with labels, seconds per step;
  - greedy generation: tokens per second (batch x new tokens / wall time, KV cache on);
  - peak memory: CUDA max_memory_allocated, or on CPU the growth of the process's max RSS (allocator-
    dependent), plus the tensors autograd saves for backward in one train step (allocator-independent).
Both models share hidden size, layers, heads and vocabulary; GLM's gated MLP gets 2/3 of ChatGLM's
inner width so the MLPs have the same parameter count. Prints a table and, with --json, one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build(kind: str, args):
    import torch

    torch.manual_seed(0)
    if kind == "chatglm6b":
        from xfed.models.chatglm import ChatGLM6BConfig, ChatGLM6BForCausalLM

        cfg = ChatGLM6BConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                              num_attention_heads=args.heads, intermediate_size=4 * args.hidden,
                              bos_token_id=args.vocab - 2, eos_token_id=args.vocab - 1, pad_token_id=0,
                              mask_token_id=args.vocab - 4, gmask_token_id=args.vocab - 3)
        return ChatGLM6BForCausalLM(cfg)
    from transformers import GlmConfig, GlmForCausalLM

    head_dim = args.hidden // args.heads
    cfg = GlmConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                    num_attention_heads=args.heads, num_key_value_heads=args.heads, head_dim=head_dim,
                    intermediate_size=(4 * args.hidden * 2) // 3, attention_bias=True,
                    max_position_embeddings=4096, pad_token_id=0, bos_token_id=args.vocab - 2,
                    eos_token_id=args.vocab - 1, tie_word_embeddings=True)
    return GlmForCausalLM(cfg)


def prompts(kind: str, args, batch: int, length: int):
    """Token ids of the right shape; ChatGLM-6B prompts end in [gMASK] <sop> as THUDM's tokenizer makes them."""
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, args.vocab - 8, (batch, length), generator=g)
    if kind == "chatglm6b":
        ids[:, -2] = args.vocab - 3
        ids[:, -1] = args.vocab - 2
    return ids


def saved_activation_mb(model, ids, mask, labels) -> float:
    """MB of tensors autograd keeps for backward (distinct storages, parameters excluded): the
    allocator-independent part of training memory."""
    import torch

    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    del loss
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in seen.items() if ptr not in params) / 2**20


def worker(kind: str, args) -> dict:
    import torch
    import transformers.models.glm.modeling_glm  # noqa: F401  (imports outside the measured memory)

    import xfed.models.chatglm  # noqa: F401

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    base_rss = _rss_mb()
    model = build(kind, args).to(device=device, dtype=getattr(torch, args.dtype))
    params = sum(p.numel() for p in model.parameters())
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    # train step: forward + backward with labels (prefix-LM for ChatGLM-6B: context then answer)
    model.train()
    ids = prompts(kind, args, args.batch, args.seq).to(device)
    if kind == "chatglm6b":
        ids[:, args.seq // 2 - 2] = args.vocab - 3
        ids[:, args.seq // 2 - 1] = args.vocab - 2
        ids[:, -2:] = torch.randint(5, args.vocab - 8, (args.batch, 2))
    labels = ids.clone()
    labels[:, : args.seq // 2] = -100
    mask = torch.ones_like(ids)
    times = []
    for i in range(args.repeats + 1):
        sync()
        t0 = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        sync()
        if i:
            times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    step = statistics.median(times)
    activation_mb = saved_activation_mb(model, ids, mask, labels)

    # greedy generation with the KV cache
    model.eval()
    prompt = prompts(kind, args, args.batch, args.prompt_len).to(device)
    pmask = torch.ones_like(prompt)
    gen_times = []
    with torch.no_grad():
        for i in range(args.repeats + 1):
            sync()
            t0 = time.perf_counter()
            out = model.generate(input_ids=prompt, attention_mask=pmask, max_new_tokens=args.new_tokens,
                                 min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
            sync()
            if i:
                gen_times.append(time.perf_counter() - t0)
    new = out.shape[1] - prompt.shape[1]
    tok_s = args.batch * new / statistics.median(gen_times)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _rss_mb() - base_rss
    return {"model": kind, "params_m": round(params / 1e6, 2), "train_step_s": round(step, 4),
            "gen_tokens_per_s": round(tok_s, 1), "peak_mem_mb": round(peak, 1),
            "saved_activations_mb": round(activation_mb, 1), "device": str(device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="also print one JSON line")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--worker", choices=["chatglm6b", "glm"], help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    passthrough = [a for a in sys.argv[1:] if a != "--json"]
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    results = []
    for kind in ("chatglm6b", "glm"):
        proc = subprocess.run([sys.executable, __file__, "--worker", kind, *passthrough], capture_output=True,
                              text=True, env=env, timeout=3600)
        if proc.returncode != 0:
            sys.exit(f"error: {kind} benchmark failed: {proc.stderr.strip().splitlines()[-1:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    ours, glm = results
    ratio = {"train_step": round(ours["train_step_s"] / glm["train_step_s"], 3),
             "gen_time": round(glm["gen_tokens_per_s"] / ours["gen_tokens_per_s"], 3),
             "peak_mem": round(ours["peak_mem_mb"] / max(glm["peak_mem_mb"], 1e-9), 3),
             "saved_activations": round(ours["saved_activations_mb"] / max(glm["saved_activations_mb"], 1e-9), 3)}
    shape = (f"hidden {args.hidden}, layers {args.layers}, heads {args.heads}, vocab {args.vocab}, "
             f"{args.dtype} on {ours['device']}, {args.threads} thread(s)")
    print(f"ChatGLM-6B (ours) vs GlmForCausalLM: {shape}")
    print(f"{'model':<12}{'params(M)':>10}{'train step (s)':>16}{'gen tok/s':>11}{'peak MB':>10}"
          f"{'saved act. MB':>15}")
    for r in results:
        print(f"{r['model']:<12}{r['params_m']:>10}{r['train_step_s']:>16}{r['gen_tokens_per_s']:>11}"
              f"{r['peak_mem_mb']:>10}{r['saved_activations_mb']:>15}")
    print(f"ours/native: train step x{ratio['train_step']}, generation time x{ratio['gen_time']}, "
          f"peak memory x{ratio['peak_mem']}, saved activations x{ratio['saved_activations']} (target <= 1.3)")
    if args.json:
        print(json.dumps({"bench": "models", "config": vars(args) | {"worker": None}, "results": results,
                          "ratio_ours_over_native": ratio}))


if __name__ == "__main__":
    main()
