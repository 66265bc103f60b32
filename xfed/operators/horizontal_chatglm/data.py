"""Fine-tuning data: read XFL QA json and JSON/JSONL records into Examples, tokenise them, pad batches.

Readers accept what users already have:
- XFL QA json: one object per file, `{"instruction": ..., "instances": [{key_query, key_answer}, ...]}`,
  a file or a folder (read in sorted order); the prompt is `prompt_pattern.format(instruction, query)`
  (or `.format(query)` for a one-slot pattern);
- JSON / JSONL records (ChatGLM p-tuning, PrimiHub, AdvertiseGen `content`/`summary`, a JSON array or one
  object per line) with `prompt_column`, `response_column` and optional `history_column` (`[[query, answer],
  ...]`); with a history column the prompt is rendered as rounds (`[Round i]\\n问：…\\n答：…`, configurable
  through `history_template`), as ChatGLM's p-tuning does.
Every bad record is a one-line ConfigError naming the file and line (JSONL) or instance index.

Tokenisation for native ("auto") models is done here: `tokenizer(prompt)` (with the tokenizer's own
special tokens, e.g. <bos>) + `tokenizer(answer)` (without) + eos, labels -100 on the prompt. ChatGLM
families have their own layouts (`[gMASK]<sop>`, role tokens) and go through `xfed.models.formats`.
"""
from __future__ import annotations

import functools
import json
import logging
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from xfed.errors import ConfigError, ModelError

from .config import DatasetParams

DatasetSection = DatasetParams | Mapping[str, Any] | None  # a plain section is validated by DatasetParams

DEFAULT_PROMPT_PATTERN = DatasetParams.model_fields["prompt_pattern"].default
# ChatGLM-6B p-tuning's round format (0-based rounds); use {round} for 1-based (ChatGLM2 style)
DEFAULT_HISTORY_TEMPLATE = "[Round {index}]\n问：{query}\n答：{answer}\n"
# columns tried, in order, when a records file has no configured prompt/response column
_AUTO_COLUMNS = (("prompt", "response"), ("content", "summary"), ("query", "response"), ("input", "output"))
_DATA_SUFFIXES = (".json", ".jsonl")
CHATGLM_FAMILIES = ("chatglm", "chatglm2", "chatglm3")
IGNORE_INDEX = -100
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One supervised example: the fully rendered prompt text and the answer to learn.

    `query` and `history` keep the raw last question and earlier (query, answer) turns, for formats that
    render conversations themselves (ChatGLM3 role tokens); `source` says where it came from.
    """

    prompt: str
    answer: str
    history: tuple[tuple[str, str], ...] = ()
    query: str = ""
    source: str = ""


def dataset_settings(value: DatasetParams | Mapping[str, Any] | None = None) -> DatasetParams:
    """The `dataset` settings: the validated model as is; a plain section (tools, tests) validated by it."""
    if isinstance(value, DatasetParams):
        return value
    try:
        return DatasetParams.model_validate(dict(value or {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"dataset.{loc}: {first['msg']}") from None


# ------------------------------------------------------------------------------------------ templates
def _named_fields(pattern: str, positional: tuple[str, ...]) -> str:
    """A pattern DatasetParams accepted, rewritten with named fields; positional `{}` slots are named from
    the end of `positional` (one slot in a two-name list means the last name: a one-slot prompt is the query)."""
    parsed = list(string.Formatter().parse(pattern))
    fields = [f for _, f, _, _ in parsed if f is not None]
    if not fields or any(fields):
        return pattern
    names = iter(positional[len(positional) - len(fields):])
    out = []
    for literal, field, spec, conv in parsed:
        out.append(literal.replace("{", "{{").replace("}", "}}"))
        if field is not None:
            out.append("{" + next(names) + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}")
    return "".join(out)


@functools.lru_cache(maxsize=64)  # rendered once per record: parse each template once
def _history_fields(template: str) -> str:
    """History template with named fields; 2 positional slots = (query, answer), 3 = (index, query, answer)."""
    dataset_settings({"history_template": template})  # a template from a tool, not a stage config
    return _named_fields(template, ("index", "query", "answer"))


@functools.lru_cache(maxsize=64)
def _prompt_fields(pattern: str) -> str:
    dataset_settings({"prompt_pattern": pattern})
    return _named_fields(pattern, ("instruction", "query"))


def render_qa_prompt(pattern: str, instruction: str, query: str) -> str:
    """XFL's QA prompt: `pattern.format(instruction, query)`, or `.format(query)` for a one-slot pattern."""
    return _prompt_fields(pattern).format(instruction=instruction, query=query)


def render_history_prompt(query: str, history: Sequence[tuple[str, str]], template: str | None = None) -> str:
    """Past turns as rounds, then the current round cut just before its answer (ChatGLM p-tuning style)."""
    named = _history_fields(template or DEFAULT_HISTORY_TEMPLATE)
    parts = [named.format(index=i, round=i + 1, query=q, answer=a) for i, (q, a) in enumerate(history)]
    current = named[:named.index("{answer")]
    n = len(history)
    parts.append(current.format(index=n, round=n + 1, query=query))
    return "".join(parts)


# ------------------------------------------------------------------------------------------ readers
def _entry_path(entry: Any) -> tuple[Path, str | None]:
    """(path, type) of one trainset/valset entry: a path, a {"path", "type"} dict, or a config object."""
    if isinstance(entry, (str, Path)):
        return Path(entry), None
    if isinstance(entry, Mapping):
        path, kind = entry.get("path"), entry.get("type")
    else:
        path, kind = getattr(entry, "path", None), getattr(entry, "type", None)
    if not path:
        raise ConfigError(f"input.trainset: dataset entry without a path: {entry!r}")
    return Path(path), (str(kind) if kind else None)


def data_files(path: str | Path) -> list[Path]:
    """The data files a path names: itself, or the .json/.jsonl files of a folder in sorted name order."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix.lower() in _DATA_SUFFIXES and not p.name.startswith("."))
        if not files:
            raise ConfigError(f"{path}: folder holds no .json or .jsonl data files")
        return files
    raise ConfigError(f"{path}: data file or folder not found")


def read_records(entries: Any, dataset_params: DatasetSection = None) -> list[Example]:
    """Examples from one or more dataset entries (paths, {"path", "type"} dicts or config objects), in order."""
    opts = dataset_settings(dataset_params)
    if isinstance(entries, (str, Path, Mapping)) or hasattr(entries, "path"):
        entries = [entries]
    out: list[Example] = []
    for entry in entries:
        path, kind = _entry_path(entry)
        for file in data_files(path):
            out.extend(read_file(file, opts, kind=kind))
    return out


read_examples = read_records


def read_file(path: str | Path, dataset_params: DatasetSection = None, *, kind: str | None = None) -> list[Example]:
    """Examples of one file; the layout is detected (QA object, JSON array, JSON lines) unless kind is "QA"."""
    opts = dataset_settings(dataset_params)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    is_qa = kind is not None and kind.lower() == "qa"
    if path.suffix.lower() == ".jsonl" and not is_qa:
        return _read_jsonl(path, text, opts)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data" and not is_qa:
            return _read_jsonl(path, text, opts)  # AdvertiseGen's train.json is JSON lines
        raise ConfigError(f"{path}: line {err.lineno} column {err.colno}: invalid JSON ({err.msg})") from None
    except RecursionError:
        raise ConfigError(f"{path}: JSON nested too deeply") from None
    if isinstance(doc, dict) and ("instances" in doc or is_qa):
        return _read_qa(path, doc, opts)
    if is_qa:
        raise ConfigError(f"{path}: type QA expects an object with 'instruction' and 'instances'")
    if isinstance(doc, list):
        return [_record_example(path, f"[{i}]", rec, opts) for i, rec in enumerate(doc)]
    if isinstance(doc, dict):
        return [_record_example(path, "line 1", doc, opts)]  # a one-record JSON lines file
    raise ConfigError(f"{path}: expected a QA object, a JSON array of records or JSON lines, "
                      f"got {type(doc).__name__}")


def _read_qa(path: Path, doc: dict[str, Any], opts: DatasetParams) -> list[Example]:
    instruction = doc.get("instruction", "")
    if not isinstance(instruction, str):
        raise ConfigError(f"{path}: instruction: expected a string, got {type(instruction).__name__}")
    instances = doc.get("instances")
    if not isinstance(instances, list):
        raise ConfigError(f"{path}: instances: expected a list of objects, got {type(instances).__name__}")
    named = _prompt_fields(opts.prompt_pattern)  # parsed once per file, not per instance
    out = []
    for i, inst in enumerate(instances):
        where = f"{path}: instances[{i}]"
        if not isinstance(inst, dict):
            raise ConfigError(f"{where}: expected an object, got {type(inst).__name__}")
        query = _text_field(inst, opts.key_query, where, "dataset.key_query")
        answer = _text_field(inst, opts.key_answer, where, "dataset.key_answer")
        prompt = named.format(instruction=instruction, query=query)
        out.append(Example(prompt=prompt, answer=answer, query=query, source=f"{path}#instances[{i}]"))
    return out


def _read_jsonl(path: Path, text: str, opts: DatasetParams) -> list[Example]:
    out = []
    # split on \n only: str.splitlines would also cut at U+2028/U+2029, which JSON strings may hold raw
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: line {lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
        except RecursionError:
            raise ConfigError(f"{path}: line {lineno}: JSON nested too deeply") from None
        out.append(_record_example(path, f"line {lineno}", rec, opts))
    return out


def _columns(rec: dict[str, Any], opts: DatasetParams) -> tuple[str, str]:
    """(prompt, response) column names: configured ones, else the first known pair the record has."""
    prompt_col = opts.prompt_column
    response_col = opts.response_column
    if prompt_col and response_col:
        return prompt_col, response_col
    for p, r in ((opts.key_query, opts.key_answer), *_AUTO_COLUMNS):
        if (prompt_col or p) in rec and (response_col or r) in rec:
            return prompt_col or p, response_col or r
    return prompt_col or opts.key_query, response_col or opts.key_answer


def _record_example(path: Path, where: str, rec: Any, opts: DatasetParams) -> Example:
    loc = f"{path}: {where}"
    if not isinstance(rec, dict):
        raise ConfigError(f"{loc}: expected a JSON object, got {type(rec).__name__}")
    prompt_col, response_col = _columns(rec, opts)
    query = _text_field(rec, prompt_col, loc, "dataset.prompt_column")
    answer = _text_field(rec, response_col, loc, "dataset.response_column")
    history: tuple[tuple[str, str], ...] = ()
    if opts.history_column:
        history = _history(rec.get(opts.history_column), loc, opts.history_column)
        prompt = render_history_prompt(query, history, opts.history_template)
    else:
        prompt = query
    return Example(prompt=prompt, answer=answer, history=history, query=query, source=loc)


def _text_field(rec: dict[str, Any], key: str, loc: str, config_key: str) -> str:
    if key not in rec:
        have = ", ".join(sorted(map(str, rec))) or "none"
        raise ConfigError(f"{loc}: missing key {key!r} (set {config_key}; keys present: {have})")
    value = rec[key]
    if not isinstance(value, str):
        raise ConfigError(f"{loc}: {key}: expected a string, got {type(value).__name__}")
    return value


def _history(value: Any, loc: str, column: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{loc}: {column}: expected a list of [query, answer] pairs, got {type(value).__name__}")
    turns = []
    for i, turn in enumerate(value):
        if (not isinstance(turn, (list, tuple)) or len(turn) != 2
                or not all(isinstance(t, str) for t in turn)):
            raise ConfigError(f"{loc}: {column}[{i}]: expected a [query, answer] pair of strings, got {turn!r:.60}")
        turns.append((turn[0], turn[1]))
    return tuple(turns)


# ------------------------------------------------------------------------------------------ features
def model_family(model: Any = None, tokenizer: Any = None) -> str:
    """'chatglm' | 'chatglm2' | 'chatglm3' | 'auto' for a loaded model (peft-wrapped or not)."""
    config = getattr(model, "config", None)
    if config is not None:
        source = getattr(config, "xfed_source_family", None)
        if source in CHATGLM_FAMILIES:
            return source
        # "chatglm6b": xfed.models.chatglm's native ChatGLM-6B; "chatglm": a THUDM remote-code model
        if getattr(config, "model_type", None) in ("chatglm", "chatglm6b"):
            return "chatglm"
    return "auto"


def _family_and_options(dataset_params: DatasetParams | Mapping[str, Any] | None, family: str | None, model: Any,
                        tokenizer: Any) -> tuple[str, DatasetParams]:
    opts = dataset_settings(dataset_params)
    fam = family or model_family(model, tokenizer)
    if fam not in (*CHATGLM_FAMILIES, "auto"):
        raise ConfigError(f"model family {fam!r}: expected one of chatglm, chatglm2, chatglm3, auto")
    return fam, opts


def eos_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ModelError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r}: has no eos token; "
                         "an answer cannot be terminated")
    return int(eos)


def _prompt_ids(tokenizer: Any, prompts: list[str], max_src: int, eos: int) -> tuple[list[list[int]], int]:
    """Prompt ids cut to max_src, and how many were longer."""
    rows = tokenizer(prompts, add_special_tokens=True)["input_ids"] if prompts else []
    out, cut = [], 0
    for row, text in zip(rows, prompts, strict=True):
        row = list(row)
        # a tokenizer that appends eos to every sequence would end the prompt before the answer starts
        if row and row[-1] == eos and not text.endswith(str(getattr(tokenizer, "eos_token", "") or "\0")):
            row.pop()
        cut += len(row) > max_src
        out.append(row[:max_src])
    return out, cut


def _formats():
    from xfed.models import formats  # lazily: reading records never needs torch

    return formats


def build_features(examples: Sequence[Example], tokenizer: Any, dataset_params: DatasetSection = None,
                   family: str | None = None,
                   *, model: Any = None) -> list[dict[str, list[int]]]:
    """Token features `{"input_ids", "labels"}` per example (labels -100 on the prompt).

    Native models ("auto"): prompt ids (tokenizer's special tokens included) truncated to max_src_length,
    then the answer ids truncated to max_dst_length - 1, then eos; ChatGLM families go through
    xfed.models.formats.build_example. The family is taken from `family`, else from `model`, else "auto".
    """
    fam, opts = _family_and_options(dataset_params, family, model, tokenizer)
    if fam in CHATGLM_FAMILIES:
        formats = _formats()
        out = []
        for ex in examples:
            ids, labels = formats.build_example(fam, tokenizer, ex, max_src_length=opts.max_src_length,
                                                max_dst_length=opts.max_dst_length)
            out.append({"input_ids": list(ids), "labels": list(labels)})
        return out
    eos = eos_id(tokenizer)
    prompts, cut_prompts = _prompt_ids(tokenizer, [ex.prompt for ex in examples], opts.max_src_length, eos)
    answers = tokenizer([ex.answer for ex in examples], add_special_tokens=False)["input_ids"] if examples else []
    out, cut_answers = [], 0
    for p, a in zip(prompts, answers, strict=True):
        cut_answers += len(a) > opts.max_dst_length - 1
        a = list(a)[:opts.max_dst_length - 1] + [eos]
        out.append({"input_ids": p + a, "labels": [IGNORE_INDEX] * len(p) + a})
    if cut_prompts or cut_answers:
        # silent truncation is how a prompt loses its "答：" marker; say so once per dataset
        log.warning("dataset: %d of %d prompts longer than max_src_length=%d and %d answers longer than "
                    "max_dst_length=%d (eos included) were truncated", cut_prompts, len(out),
                    opts.max_src_length, cut_answers, opts.max_dst_length)
    return out


def build_prompts(examples: Sequence[Example], tokenizer: Any, dataset_params: DatasetSection = None,
                  family: str | None = None,
                  *, model: Any = None) -> list[tuple[list[int], str]]:
    """(prompt ids ready for generation, reference answer) per example, truncated like build_features."""
    fam, opts = _family_and_options(dataset_params, family, model, tokenizer)
    if fam in CHATGLM_FAMILIES:
        formats = _formats()
        return [(list(formats.build_prompt_ids(fam, tokenizer, ex, max_src_length=opts.max_src_length)), ex.answer)
                for ex in examples]
    prompts, _ = _prompt_ids(tokenizer, [ex.prompt for ex in examples], opts.max_src_length, eos_id(tokenizer))
    return [(p, ex.answer) for p, ex in zip(prompts, examples, strict=True)]
