"""The `trainer` section: the fields of the installed transformers.TrainingArguments, read from its
source with `ast`, and the keys xfed reserves, renames or sets itself.

Checking a `trainer` section must not cost an import of transformers (and torch: ~5-10 s on
a busy machine), so the dataclass is read from the installed `training_args.py` without
executing it: field names, the JSON types each annotation admits and, for enum-typed fields
(save_strategy, lr_scheduler_type, optim ...), the allowed strings. If the source cannot be
read that way, the real class is imported instead (names exact, types not checked).
"""
from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic_core import InitErrorDetails, PydanticCustomError

from xfed.config.base import did_you_mean

# Annotation names -> JSON kinds they admit ("float" admits ints too, as Python does).
_SIMPLE = {"int": {"int"}, "float": {"float", "int"}, "bool": {"bool"}, "str": {"str"},
           "dict": {"dict"}, "Dict": {"dict"}, "list": {"list"}, "List": {"list"},
           "tuple": {"list"}, "Tuple": {"list"}, "Any": {"any"}}
_ENUM_SOURCES = ("training_args.py", "trainer_utils.py", "debug_utils.py")


@dataclass(frozen=True)
class FieldSpec:
    """What a TrainingArguments field accepts from JSON."""

    kinds: frozenset[str]           # among int float bool str null dict list any
    choices: tuple[str, ...] = ()   # allowed strings for enum-typed fields (empty: any string)

    def describe(self) -> str:
        order = ["bool", "int", "float", "str", "dict", "list", "null"]
        return " | ".join(k for k in order if k in self.kinds) or "any"


def json_kind(value: Any) -> str:
    if value is None:
        return "null"
    for kind, tp in (("bool", bool), ("int", int), ("float", float), ("str", str), ("dict", dict), ("list", list)):
        if isinstance(value, tp):
            return kind
    return type(value).__name__


# Ranges the type alone does not say; a value outside surfaced only at training time (a raw
# ValueError, or "node-1 has -4 optimizer steps"). name -> (lowest allowed, inclusive?, wording).
_RANGES: dict[str, tuple[float, bool, str]] = {
    "per_device_train_batch_size": (1, True, ">= 1"),
    "per_device_eval_batch_size": (1, True, ">= 1"),
    "gradient_accumulation_steps": (1, True, ">= 1"),
    "num_train_epochs": (0, False, "> 0"),
}


def check_value(spec: FieldSpec, value: Any, name: str = "") -> str | None:
    """None if `value` fits `spec` (and the field's range), else a one-line reason."""
    kind = json_kind(value)
    if "any" not in spec.kinds and kind not in spec.kinds:
        return f"expected {spec.describe()}, got {value!r}"[:160]
    if kind == "str" and spec.choices and value not in spec.choices:
        return f"must be one of {', '.join(spec.choices)}, got {value!r}"
    if name in _RANGES and kind in ("int", "float"):
        low, inclusive, wording = _RANGES[name]
        if value < low or (value == low and not inclusive):
            return f"must be {wording}, got {value!r}"
    return None


def _transformers_dir() -> Path | None:
    spec = importlib.util.find_spec("transformers")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _enums(trees: list[ast.Module]) -> dict[str, tuple[str, ...]]:
    enums: dict[str, tuple[str, ...]] = {}
    for tree in trees:
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
            if not bases & {"ExplicitEnum", "Enum", "str"}:
                continue
            values = [s.value.value for s in node.body
                      if isinstance(s, ast.Assign) and isinstance(s.value, ast.Constant)
                      and isinstance(s.value.value, str)]
            if values:
                enums[node.name] = tuple(values)
    return enums


def _spec(node: ast.AST, enums: dict[str, tuple[str, ...]]) -> tuple[set[str], tuple[str, ...]]:
    """(kinds, choices) an annotation admits."""
    if isinstance(node, ast.Constant):
        if node.value is None:
            return {"null"}, ()
        if isinstance(node.value, str):  # a quoted annotation
            try:
                return _spec(ast.parse(node.value, mode="eval").body, enums)
            except SyntaxError:
                return {"any"}, ()
        return {"any"}, ()
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([node.left, node.right], enums)
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
    if isinstance(node, ast.Subscript):
        outer = _spec(node.value, enums)
        head = node.value.id if isinstance(node.value, ast.Name) else getattr(node.value, "attr", "")
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if head == "Optional":
            kinds, choices = _union(args, enums)
            return kinds | {"null"}, choices
        if head == "Union":
            return _union(args, enums)
        if head == "Literal":
            values = [a.value for a in args if isinstance(a, ast.Constant)]
            kinds = {"null" if v is None else "str" if isinstance(v, str) else "any" for v in values}
            return kinds, tuple(v for v in values if isinstance(v, str))
        return outer[0], ()
    if name in _SIMPLE:
        return set(_SIMPLE[name]), ()
    if name in enums:
        return {"str"}, enums[name]
    if name == "None":
        return {"null"}, ()
    return {"any"}, ()


def _union(nodes: list[ast.AST], enums: dict[str, tuple[str, ...]]) -> tuple[set[str], tuple[str, ...]]:
    kinds: set[str] = set()
    choices: tuple[str, ...] = ()
    for node in nodes:
        k, c = _spec(node, enums)
        kinds |= k
        choices += c
    return kinds, choices


def _is_non_init(value: ast.AST | None) -> bool:
    if not isinstance(value, ast.Call):
        return False
    return any(kw.arg == "init" and isinstance(kw.value, ast.Constant) and kw.value.value is False
               for kw in value.keywords)


def _from_source(folder: Path) -> dict[str, FieldSpec]:
    trees = []
    for name in _ENUM_SOURCES:
        try:
            trees.append(ast.parse((folder / name).read_text(encoding="utf-8")))
        except (OSError, SyntaxError, ValueError):
            continue
    enums = _enums(trees)
    for tree in trees[:1]:
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == "TrainingArguments":
                out = {}
                for stmt in node.body:
                    if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                            and not _is_non_init(stmt.value)):
                        kinds, choices = _spec(stmt.annotation, enums)
                        if "str" not in kinds:  # choices only restrict strings
                            choices = ()
                        out[stmt.target.id] = FieldSpec(frozenset(kinds), tuple(dict.fromkeys(choices)))
                return out
    return {}


def _from_import() -> dict[str, FieldSpec]:
    import dataclasses

    from transformers import TrainingArguments  # the slow path: only if the source was unreadable

    return {f.name: FieldSpec(frozenset({"any"})) for f in dataclasses.fields(TrainingArguments) if f.init}


@lru_cache(maxsize=1)
def training_argument_specs() -> dict[str, FieldSpec]:
    """{field name: FieldSpec} of the installed TrainingArguments."""
    folder = _transformers_dir()
    if folder is None:
        return {}
    specs = _from_source(folder / "") if folder.is_dir() else {}
    # A handful of fields would mean the class moved or changed shape: ask the real thing.
    return specs if len(specs) >= 50 else _from_import()


# ---------------------------------------------------------------- the `trainer` section
# Set by xfed itself: a value in the config would be silently overridden, so it is refused.
RESERVED_TRAINER_KEYS = {"output_dir": "set by xfed from output.path"}
XFL_TRAINER_ALIASES = {"no_cuda": "use_cpu"}  # removed from TrainingArguments in transformers 5
# TrainingArguments the operator sets itself (it saves an adapter at every aggregation point and logs
# every optimizer step for the round's loss): a config value for one of these is ignored, and `validate`
# says so in a note. report_to is not among them: each party's own, default "none" (reporting.py).
FORCED_TRAINER_ARGS: dict[str, Any] = {
    "save_strategy": "no",
    "eval_strategy": "no",
    "logging_strategy": "steps",
    "logging_steps": 1,
    "disable_tqdm": True,
    "remove_unused_columns": False,
    "load_best_model_at_end": False,
    "push_to_hub": False,
}


def check_trainer_args(trainer: dict[str, Any]) -> list[InitErrorDetails]:
    """Errors (located at the key) for unknown keys and ill-typed values of TrainingArguments."""
    specs = training_argument_specs()
    errors: list[InitErrorDetails] = []

    def error(key: str, message: str) -> None:
        errors.append(InitErrorDetails(type=PydanticCustomError("trainer_arg", message), loc=(key,), input=None))

    if "no_cuda" in trainer and "use_cpu" in trainer and trainer["no_cuda"] != trainer["use_cpu"]:
        error("no_cuda", "XFL's no_cuda is use_cpu in transformers 5; they disagree here")
    for key, value in trainer.items():
        name = XFL_TRAINER_ALIASES.get(key, key)
        if key in RESERVED_TRAINER_KEYS:
            error(key, RESERVED_TRAINER_KEYS[key])
        elif not specs:  # transformers is not installed here: nothing to check against
            continue
        elif name not in specs:
            error(key, "not a transformers.TrainingArguments field" + did_you_mean(key, [*specs, *XFL_TRAINER_ALIASES]))
        elif (reason := check_value(specs[name], value, name)) is not None:
            error(key, reason)
    return errors


def trainer_kwargs(trainer: dict[str, Any] | None) -> dict[str, Any]:
    """TrainingArguments keyword arguments from a `trainer` section (XFL's no_cuda -> use_cpu)."""
    out: dict[str, Any] = {}
    for key, value in (trainer or {}).items():
        out[XFL_TRAINER_ALIASES.get(key, key)] = value
    return out
