"""`xfed convert SRC DST`: write a THUDM ChatGLM folder once as a native transformers folder.

ChatGLM2/3 become GlmForCausalLM safetensors that plain `AutoModelForCausalLM.from_pretrained`
loads (the tokenizer is xfed's ChatGLM3Tokenizer, found by AutoTokenizer after `import xfed.models.chatglm3`);
ChatGLM-6B becomes xfed's own registered model class. Weights keep the dtype they had on disk.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from xfed.errors import ModelError
from xfed.models.family import detect_family, read_config


def convert(src: str | Path, dst: str | Path) -> Path:
    """Convert SRC into the new folder DST (refuses a non-empty DST); returns DST."""
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    family = detect_family(src)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ModelError(f"{dst}: destination exists and is not empty")
    if src.resolve() == dst.resolve():
        raise ModelError(f"{dst}: destination must differ from the source")
    cfg = read_config(src)
    if family == "auto":
        raise ModelError(f"{src}: already a native transformers folder (model_type {cfg.get('model_type')!r}); "
                         "nothing to convert")
    disk_dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "float16")
    from transformers.utils import logging as hf_logging

    from xfed.models.loading import load_pretrained, resolve_dtype

    hf_logging.disable_progress_bar()

    try:
        dtype = resolve_dtype(disk_dtype)
    except ModelError:
        dtype = resolve_dtype("float16")
    model, tokenizer = load_pretrained(src, dtype=dtype)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst, safe_serialization=True)
    tokenizer.save_pretrained(dst)
    _drop_remote_code_refs(dst / "tokenizer_config.json")
    return dst


def _drop_remote_code_refs(path: Path) -> None:
    # A copied THUDM auto_map would send AutoTokenizer looking for THUDM's .py files.
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.pop("auto_map", None) is not None:
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def convert_command(src: str, dst: str) -> int:
    """CLI entry: convert and print what was written."""
    out = convert(src, dst)
    files = sorted(p.name for p in out.iterdir())
    click.echo(f"converted {src} ({detect_family(src)}) -> {out}: {', '.join(files)}")
    return 0
