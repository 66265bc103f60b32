"""Write the synthetic 3-party non-IID string-skill task (XFL QA json + JSONL) used by the demo and benchmark.

Each example asks for one letter cipher applied to a six-letter lowercase word:
    shift abcxyz -> bcdyza (+1)    back abcxyz -> zabwxy (-1)    mirror abcxyz -> zyxcba (a<->z, atbash)
Party node-1 holds mostly `shift`, node-2 mostly `back`, node-3 mostly `mirror` (90/10), so no single
party can learn all three; the assist trainer holds a small balanced shard; the held-out set is balanced.
See docs/DEMO_TASK.md for the reasoning and the measured learnability.

Usage: python scripts/make_demo_data.py [--out work/demo_data] [--seed 0] [--letters abcdefgh]
"""
from __future__ import annotations

import argparse
import json
import random
import string
from collections import Counter
from collections.abc import Callable
from pathlib import Path

# XFL's default prompt pattern; the instruction is shared by every example (a QA file has one instruction),
# the skill is named in the query.
PROMPT_PATTERN = "{}：\n问：{}\n答："
INSTRUCTION = "text"
LETTERS = string.ascii_lowercase
MIN_LEN, MAX_LEN = 6, 6


def ciphers(letters: str = LETTERS) -> dict[str, Callable[[str], str]]:
    """The three skills over `letters`: shift and back wrap inside it, mirror maps first <-> last."""
    n, index = len(letters), {c: i for i, c in enumerate(letters)}
    return {
        "shift": lambda w: "".join(letters[(index[c] + 1) % n] for c in w),
        "back": lambda w: "".join(letters[(index[c] - 1) % n] for c in w),
        "mirror": lambda w: "".join(letters[n - 1 - index[c]] for c in w),
    }


SKILLS = ciphers()
SKILL_NAMES = list(SKILLS)  # fixed order: shift, back, mirror
PARTIES = {"node-1": "shift", "node-2": "back", "node-3": "mirror"}
MAIN_SHARE = 0.9

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "work" / "demo_data"
# sizes (examples); small on purpose: the README demo must finish in minutes on 2 CPU cores
N_TRAIN_PER_PARTY = 600
N_VAL_PER_PARTY = 30
N_ASSIST = 90
N_HELDOUT_PER_SKILL = 50


def render_prompt(query: str, instruction: str = INSTRUCTION, pattern: str = PROMPT_PATTERN) -> str:
    """The prompt text the model sees, exactly as the QA reader renders it."""
    return pattern.format(instruction, query)


def random_word(rng: random.Random, letters: str = LETTERS) -> str:
    return "".join(rng.choice(letters) for _ in range(rng.randint(MIN_LEN, MAX_LEN)))


def make_instance(rng: random.Random, skill: str, used: set[str], letters: str = LETTERS,
                  skills: dict[str, Callable[[str], str]] = SKILLS) -> dict[str, str]:
    """One example of `skill` (from `skills`, the ciphers over `letters`) on a word never used before,
    whose answer differs from the word."""
    fn = skills[skill]
    while True:
        word = random_word(rng, letters)
        # an answer equal to the word would let a model that merely copies score
        if word in used or fn(word) == word:
            continue
        used.add(word)
        return {"input": f"{skill} {word}", "output": fn(word), "skill": skill}


def party_skills(rng: random.Random, main: str, n: int) -> list[str]:
    """Exactly round(0.9 n) of the main skill, the rest split evenly over the others, shuffled."""
    others = [s for s in SKILL_NAMES if s != main]
    n_main = round(MAIN_SHARE * n)
    rest = [others[i % len(others)] for i in range(n - n_main)]
    skills = [main] * n_main + rest
    rng.shuffle(skills)
    return skills


def balanced_skills(rng: random.Random, n: int) -> list[str]:
    skills = [SKILL_NAMES[i % len(SKILL_NAMES)] for i in range(n)]
    rng.shuffle(skills)
    return skills


def write_shard(out: Path, name: str, instances: list[dict[str, str]]) -> None:
    """`name`.json in XFL's QA layout and `name`.jsonl with prompt/response columns (same rendered text)."""
    qa = {"id": name, "name": "string skills", "instruction": INSTRUCTION, "instances": instances}
    (out / f"{name}.json").write_text(json.dumps(qa, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
        for inst in instances:
            row = {"prompt": render_prompt(inst["input"]), "response": inst["output"], "skill": inst["skill"]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def build(seed: int = 0, letters: str = LETTERS) -> dict[str, list[dict[str, str]]]:
    """All shards by name; deterministic in `seed`; no word appears in two examples."""
    rng = random.Random(seed)
    used: set[str] = set()
    shards: dict[str, list[dict[str, str]]] = {}
    skills = ciphers(letters)

    def draw(skill: str) -> dict[str, str]:
        return make_instance(rng, skill, used, letters, skills)

    # held-out first so that its words are never in any training shard
    shards["heldout"] = [draw(s) for s in balanced_skills(rng, 3 * N_HELDOUT_PER_SKILL)]
    for party, main in PARTIES.items():
        shards[party] = [draw(s) for s in party_skills(rng, main, N_TRAIN_PER_PARTY)]
        shards[f"{party}_val"] = [draw(s) for s in party_skills(rng, main, N_VAL_PER_PARTY)]
    shards["assist_trainer"] = [draw(s) for s in balanced_skills(rng, N_ASSIST)]
    return shards


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default: work/demo_data in the repo)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--letters", default=LETTERS,
                    help="the alphabet of words and ciphers (default a-z; the P-tuning v2 demo uses abcdefgh)")
    args = ap.parse_args(argv)
    if len(set(args.letters)) != len(args.letters) or len(args.letters) < 3 or not args.letters.isalpha():
        ap.error(f"--letters {args.letters!r}: give at least 3 distinct letters")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        ap.error(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    shards = build(args.seed, args.letters)
    manifest = {"seed": args.seed, **({"letters": args.letters} if args.letters != LETTERS else {}), "prompt_pattern": PROMPT_PATTERN, "instruction": INSTRUCTION, "shards": {}}
    for name, instances in shards.items():
        write_shard(out, name, instances)
        manifest["shards"][name] = {"n": len(instances), "skills": dict(Counter(i["skill"] for i in instances))}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    print(f"demo data in {out}: " + ", ".join(f"{k} {v['n']}" for k, v in manifest["shards"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
