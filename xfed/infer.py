"""Chat with, or score, a base model plus a trained adapter: `python -m xfed.infer --model DIR --adapter DIR`.

With `--prompt TEXT` it answers once; with `--eval FILE` it prints exact match / ROUGE-L on a
held-out file (XFL QA json, or JSON/JSONL with prompt/response columns); otherwise it chats,
keeping the conversation as history (an empty line or Ctrl-D ends it, `/clear` forgets).
"""
from __future__ import annotations

import json
import sys

import click

from xfed.errors import XfedError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_dir", required=True, help="Base model folder (as in input.pretrained_model.path).")
@click.option("--adapter", "adapter_dir", default=None, help="Adapter folder (e.g. OUTPUT/final); omit for the base model.")
@click.option("--prompt", default=None, help="Answer this one prompt and exit.")
@click.option("--eval", "eval_file", default=None, help="Score greedy answers on this file and exit.")
@click.option("--pattern", default=None,
              help='Prompt pattern as dataset.prompt_pattern (default XFL\'s "{}：\\n问：{}\\n答：").')
@click.option("--instruction", default="", help="Instruction for a two-slot pattern (XFL QA `instruction`).")
@click.option("--max-new-tokens", default=64, show_default=True, type=int)
@click.option("--baseline", is_flag=True, help="--eval: score the base model too (the adapter switched off).")
@click.option("--show", default=0, show_default=True, type=int, help="--eval: print this many examples.")
@click.option("--json", "as_json", is_flag=True, help="--eval: print the scores as JSON.")
@click.option("--metrics", default="exact_match,rouge_l", show_default=True,
              help="--eval: comma-separated scores; rouge-1, rouge-2, rouge-l, bleu-4 are THUDM's ptuning ones "
                   "(jieba + rouge_chinese, nltk BLEU-4 with smoothing method 3, 0..100).")
def main(model_dir, adapter_dir, prompt, eval_file, pattern, instruction, max_new_tokens, baseline, show, as_json,
         metrics):
    """Load base + adapter and answer, score or chat."""
    try:
        from xfed.operators.horizontal_chatglm import inference
        from xfed.operators.horizontal_chatglm.metrics_thudm import parse_metrics

        wanted = parse_metrics(metrics, "--metrics")
        model, tokenizer = inference.load_for_inference(model_dir, adapter_dir)
        if eval_file:
            params = {"prompt_pattern": pattern} if pattern else None
            pairs = inference.read_eval_pairs(eval_file, model, tokenizer, params)
            runs = {}
            if baseline:
                runs["base"], runs["adapter"] = inference.evaluate_with_baseline(model, tokenizer, pairs, max_new_tokens,
                                                                                 metrics=wanted)
            else:
                runs["adapter" if adapter_dir else "base"] = inference.evaluate_pairs(model, tokenizer, pairs,
                                                                                    max_new_tokens, metrics=wanted)
            _print_eval(runs, pairs, tokenizer, show, as_json)
            return
        if prompt is not None:
            text = inference.render_prompt(prompt, pattern=pattern, instruction=instruction)
            click.echo(inference.answer(model, tokenizer, text, max_new_tokens, query=prompt))
            return
        _chat(inference, model, tokenizer, pattern, instruction, max_new_tokens)
    except XfedError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)


def _print_eval(runs: dict, pairs: list, tokenizer, show: int, as_json: bool) -> None:
    from xfed.operators.horizontal_chatglm.metrics_thudm import THUDM_METRICS

    if as_json:
        click.echo(json.dumps({name: {k: v for k, v in r.items() if k != "predictions"} for name, r in runs.items()}))
        return
    for name, r in runs.items():
        label = "base model" if name == "base" else "base + adapter"
        thudm = " ".join(f"{k} {r[k]:.2f}" for k in THUDM_METRICS if k in r)
        thudm = f"  THUDM: {thudm}" if thudm else ""
        click.echo(f"{label:>15}: exact match {r['exact_match']:.3f}  rouge-l {r['rouge_l']:.3f}{thudm}  (n={r['n']})")
    for i, (ids, reference) in enumerate(pairs[:show]):
        prompt = tokenizer.decode(ids, skip_special_tokens=True).replace("\n", "⏎")
        answers = "  ".join(f"{name}={r['predictions'][i]!r}" for name, r in runs.items())
        click.echo(f"  {prompt!r} -> expected {reference!r}: {answers}")


def _chat(inference, model, tokenizer, pattern, instruction, max_new_tokens) -> None:
    history: list[tuple[str, str]] = []
    click.echo("chat: an empty line or Ctrl-D ends, /clear forgets the history")
    while True:
        try:
            query = input("你/you> ").strip()
        except EOFError:
            break
        if not query:
            break
        if query == "/clear":
            history.clear()
            continue
        text = inference.render_prompt(query, history=history, pattern=pattern, instruction=instruction)
        reply = inference.answer(model, tokenizer, text, max_new_tokens, query=query, history=history)
        click.echo(f"model> {reply}")
        history.append((query, reply))


if __name__ == "__main__":
    main()
