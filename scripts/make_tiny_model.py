"""Build the tiny GLM-architecture model and character tokenizer that tests and the demo fine-tune.

Trains a character-level tokenizer with `tokenizers`, builds a small `GlmForCausalLM`, pre-trains it briefly
on a task family related to the demo task (copy / uppercase / lowercase a six-letter word, in the demo's
prompt format) so that a LoRA or prefix can adapt it to the demo's letter ciphers (shift / back / mirror,
scripts/make_demo_data.py), and saves model and tokenizer with
`save_pretrained` (safetensors). Deterministic in --seed; idempotent: a folder whose recipe stamp matches
the arguments is left alone.

Usage: python scripts/make_tiny_model.py [--out work/tiny-glm] [--seed 0] [--steps 800]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import string
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_demo_data import LETTERS, MAX_LEN, MIN_LEN, render_prompt  # noqa: E402

RECIPE_VERSION = 2
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "work" / "tiny-glm"
STAMP = "xfed_tiny_recipe.json"
SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
# every printable ASCII char, newline/tab, and the CJK characters of XFL's and ChatGLM's prompt templates
# ("{}：\n问：{}\n答：", "[Round i]\n问：…\n答：…"), so real user configs tokenise without <unk>
ALPHABET = string.printable + "问答：，。！？、；“”（）"
# (word alphabet, transformation) per pre-training skill: copying with a letter-to-letter map, which the demo's
# ciphers (shift / back / mirror) reuse with maps the base model has never seen
UPPER = LETTERS.upper()
PRETRAIN_SKILLS = {
    "copy": (LETTERS, lambda w: w),
    "upper": (LETTERS, lambda w: w.upper()),
    "lower": (UPPER, lambda w: w.lower()),
}
MODEL_SIZES = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=8,
                   num_key_value_heads=4, max_position_embeddings=256)
# full rotary (GLM's default rotates half of each head): finer relative positions for copying
PARTIAL_ROTARY_FACTOR = 1.0


def pretrain_pairs(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """(prompt, answer) pairs of the pre-training skills, in the demo's prompt format."""
    pairs = []
    for _ in range(n):
        skill = rng.choice(sorted(PRETRAIN_SKILLS))
        alphabet, fn = PRETRAIN_SKILLS[skill]
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(MIN_LEN, MAX_LEN)))
        pairs.append((render_prompt(f"{skill} {word}"), fn(word)))
    return pairs


def train_tokenizer(corpus: list[str]):
    """A WordLevel tokenizer over single characters; <bos> prepended; Fuse decoder joins characters back."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    # "[\s\S]" rather than "." so that newlines are tokens too
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIALS, min_frequency=1, show_progress=False)
    tok.train_from_iterator([ALPHABET, *corpus], trainer=trainer)
    bos_id = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>",
        model_max_length=MODEL_SIZES["max_position_embeddings"], padding_side="right")


def build_model(tokenizer, seed: int):
    import torch
    from transformers import GlmConfig, GlmForCausalLM

    sizes = MODEL_SIZES
    config = GlmConfig(
        vocab_size=len(tokenizer), head_dim=sizes["hidden_size"] // sizes["num_attention_heads"],
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False, **sizes)
    config.rope_parameters["partial_rotary_factor"] = PARTIAL_ROTARY_FACTOR
    torch.manual_seed(seed)
    return GlmForCausalLM(config)


def encode_batch(tokenizer, pairs: list[tuple[str, str]]):
    """Right-padded input_ids/attention_mask/labels; loss only on the answer and <eos>."""
    import torch

    rows, labels = [], []
    for prompt, answer in pairs:
        p = tokenizer(prompt)["input_ids"]
        a = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    lab = torch.tensor([r + [-100] * (width - len(r)) for r in labels])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask, lab


def pretrain(model, tokenizer, rng: random.Random, steps: int, batch: int, lr: float, log_every: int) -> float:
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model.train()
    loss_value = float("nan")
    for step in range(steps):
        ids, mask, lab = encode_batch(tokenizer, pretrain_pairs(rng, batch))
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss_value = loss.item()
        if log_every and (step + 1) % log_every == 0:
            print(f"  step {step + 1}/{steps} loss {loss_value:.4f}", flush=True)
    model.eval()
    return loss_value


def recipe(args: argparse.Namespace) -> dict:
    return {"recipe_version": RECIPE_VERSION, "seed": args.seed, "steps": args.steps, "batch": args.batch,
            "lr": args.lr, "sizes": MODEL_SIZES, "partial_rotary_factor": PARTIAL_ROTARY_FACTOR, "pretrain_skills": sorted(PRETRAIN_SKILLS)}


def is_current(out: Path, want: dict) -> bool:
    try:
        have = json.loads((out / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return have == want and (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default: work/tiny-glm in the repo)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=800, help="pre-training steps (default 800, ~30-60 s)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1; cores are shared)")
    ap.add_argument("--force", action="store_true", help="rebuild even if the folder matches the recipe")
    args = ap.parse_args(argv)
    if args.steps < 0 or args.batch < 1 or not args.lr > 0 or args.threads < 1:
        ap.error("--steps must be >= 0, --batch and --threads >= 1, --lr > 0")
    out = Path(args.out)
    want = recipe(args)
    if not args.force and is_current(out, want):
        print(f"tiny model in {out} is up to date (recipe {STAMP})")
        return 0
    # never delete a folder this script did not write (a user's model, a typo'd path)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / STAMP).is_file())):
        ap.error(f"--out {out}: exists and was not written by this script; choose another folder")

    import torch

    torch.set_num_threads(args.threads)
    t0 = time.time()
    rng = random.Random(args.seed)
    corpus = [p + a for p, a in pretrain_pairs(random.Random(args.seed), 200)]
    tokenizer = train_tokenizer(corpus)
    model = build_model(tokenizer, args.seed)
    torch.manual_seed(args.seed)
    loss = pretrain(model, tokenizer, rng, args.steps, args.batch, args.lr, log_every=max(1, args.steps // 8))

    # write beside the target then rename, so a crash or a concurrent reader never sees half a folder
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / STAMP).write_text(json.dumps(want, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tiny model in {out}: {n_params / 1e6:.2f}M params, vocab {len(tokenizer)}, "
          f"final pre-train loss {loss:.4f}, {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
