"""Which model family a local folder holds, read from its config.json (never from remote code)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xfed.errors import ModelError

FAMILIES = ("chatglm", "chatglm2", "chatglm3", "auto")

# ChatGLM2/3 checkpoints share one architecture and one tokenizer.model; only the chat
# tokenizer (role tokens) and the fine-tuning format differ, so the name is the best hint.
_V2_VOCAB = 65024
_GLM4_VOCAB = 151552


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object; ModelError naming the file otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data


def read_config(path: str | Path) -> dict[str, Any]:
    """config.json of a model folder as a dict; ModelError naming the file when absent or malformed."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelError(f"{folder}: model folder not found")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelError(f"{cfg_path}: config.json not found in the model folder")
    return read_json_object(cfg_path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def is_v1_config(cfg: dict[str, Any]) -> bool:
    """True for a ChatGLM-6B (GLM-130B-style, 2-D positions) config."""
    if cfg.get("model_type") != "chatglm":
        return False
    if "multi_query_group_num" in cfg or "kv_channels" in cfg or "padded_vocab_size" in cfg:
        return False
    return "inner_hidden_size" in cfg or "position_encoding_2d" in cfg or "gmask_token_id" in cfg


def is_v2_config(cfg: dict[str, Any]) -> bool:
    """True for a ChatGLM2-6B / ChatGLM3-6B (multi-query, SwiGLU, RMSNorm) config."""
    return cfg.get("model_type") == "chatglm" and "kv_channels" in cfg and "ffn_hidden_size" in cfg


def _name_hints(folder: Path, cfg: dict[str, Any]) -> str:
    tok_cfg = _read_json(folder / "tokenizer_config.json")
    parts = [str(cfg.get("_name_or_path", "")), str(tok_cfg.get("name_or_path", "")),
             str(tok_cfg.get("chat_template", "")), folder.name]
    return " ".join(parts).lower()


def detect_family(path: str | Path) -> str:
    """'chatglm' (ChatGLM-6B), 'chatglm2', 'chatglm3', or 'auto' (a folder transformers loads natively)."""
    folder = Path(path)
    cfg = read_config(folder)
    model_type = cfg.get("model_type")
    if model_type == "chatglm6b":  # a ChatGLM-6B copy saved by xfed (xfed.models.chatglm)
        return "chatglm"
    if model_type != "chatglm":
        # A folder we converted earlier keeps its THUDM family so the tokenizer, chat format and
        # position semantics stay those of the original model.
        source = cfg.get("xfed_source_family")
        if model_type == "glm" and source in ("chatglm2", "chatglm3"):
            return source
        if not model_type:
            raise ModelError(f"{folder / 'config.json'}: no model_type key; cannot tell the model family")
        return "auto"
    if is_v1_config(cfg):
        return "chatglm"
    if not is_v2_config(cfg):
        raise ModelError(f"{folder / 'config.json'}: unknown ChatGLM variant (model_type chatglm without "
                         "ChatGLM-6B keys like inner_hidden_size nor ChatGLM2/3 keys like kv_channels)")
    vocab = cfg.get("padded_vocab_size", cfg.get("vocab_size"))
    if vocab == _GLM4_VOCAB:
        raise ModelError(f"{folder / 'config.json'}: THUDM GLM-4 folder (tiktoken tokenizer, padded_vocab_size "
                         f"{vocab}) is not supported; use its transformers-native '-hf' release")
    if vocab != _V2_VOCAB:
        raise ModelError(f"{folder / 'config.json'}: unknown ChatGLM variant: padded_vocab_size {vocab!r} "
                         f"(ChatGLM2/3 use {_V2_VOCAB})")
    hints = _name_hints(folder, cfg)
    if "chatglm2" in hints and "chatglm3" not in hints:
        return "chatglm2"
    return "chatglm3"
