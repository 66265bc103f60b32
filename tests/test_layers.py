"""The layer rules of docs/DESIGN.md, read from the code's imports and calls (AST, nothing is run).

crypto imports neither redis nor torch; only broker imports redis and issues Redis commands; only
models and operators import transformers/peft; config imports no operator (operators register
their settings models into config); no module imports the package root `xfed`; no module imports
a module that xfed starts as a child process (`python -m xfed....`).
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "xfed"

# Redis commands as redis-py methods, distinctive enough not to be a dict's or a list's
REDIS_COMMANDS = frozenset("""
    hget hmget hset hsetnx hgetall hdel hincrby hkeys hlen hexists xadd xread xreadgroup xack xgroup_create
    xgroup_createconsumer xautoclaim xclaim xpending xpending_range xrange xrevrange xlen xtrim xdel xinfo_stream
    pttl ttl expire pexpire persist setex psetex setnx incr incrby decr lpush rpush lpop rpop blpop brpop lrange
    llen ltrim sadd srem smembers sismember scard zadd zrem zrange zrangebyscore zcard publish subscribe
    pipeline execute_command scan scan_iter unlink mget mset eval evalsha script_load ping acl_setuser
    acl_deluser acl_list acl_save client_list client_setname flushdb flushall
""".split())
# names our code gives a redis.Redis or one of its pipelines
REDIS_RECEIVERS = frozenset({"r", "redis", "pipe", "pipeline", "client_r", "rds"})


def module_name(path: Path, package: Path) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports_of(tree: ast.AST, module: str, is_package: bool, submodules: set[str]) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import, function-level ones included."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name == "xfed":  # `from xfed import x` imports the root unless x is a submodule
                out += [(node.lineno, f"xfed.{a.name}" if f"xfed.{a.name}" in submodules else "xfed")
                        for a in node.names]
            else:
                out.append((node.lineno, name))
    return out


def redis_calls(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in REDIS_COMMANDS:
            recv = node.func.value
            name = recv.id if isinstance(recv, ast.Name) else recv.attr if isinstance(recv, ast.Attribute) else ""
            if name in REDIS_RECEIVERS:
                out.append((node.lineno, f"{name}.{node.func.attr}()"))
    return out


def _in(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def entry_modules(files: dict[str, ast.AST]) -> set[str]:
    """Modules our code starts as child processes (`[python, "-m", "xfed...."]`): entry points, not libraries."""
    out = set()
    for tree in files.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.List, ast.Tuple)):
                items = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
                out.update(b for a, b in zip(items, items[1:], strict=False) if a == "-m" and isinstance(b, str))
    return out


@functools.lru_cache(maxsize=1)
def parsed(package: Path = PACKAGE) -> tuple[dict[str, ast.AST], frozenset[str]]:
    """({module: AST}, package modules) of every file under `package`, read once per test session."""
    files: dict[str, ast.AST] = {}
    packages: set[str] = set()
    for path in sorted(package.rglob("*.py")):
        name = module_name(path, package)
        files[name] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        if path.name == "__init__.py":
            packages.add(name)
    return files, frozenset(packages)


def module_violations(module: str, tree: ast.AST, packages: frozenset[str], names: set[str],
                      entries: set[str]) -> list[str]:
    found = []
    for line, imported in imports_of(tree, module, module in packages, names):
        top = imported.split(".")[0]
        where = f"{module}:{line} imports {imported}"
        if _in(module, "xfed.crypto") and top in ("redis", "torch"):
            found.append(f"{where}: crypto imports neither redis nor torch")
        if top == "redis" and not _in(module, "xfed.broker"):
            found.append(f"{where}: only xfed.broker talks to Redis")
        if top in ("transformers", "peft") and not _in(module, "xfed.models", "xfed.operators"):
            found.append(f"{where}: only xfed.models and xfed.operators import transformers/peft")
        if _in(module, "xfed.config") and _in(imported, "xfed.operators"):
            found.append(f"{where}: config imports no operator (operators register into config)")
        if imported == "xfed" and module != "xfed":
            found.append(f"{where}: no module imports the package root")
        if imported in entries and imported != module:
            found.append(f"{where}: {imported} is a child process's entry point, not a library")
    if not _in(module, "xfed.broker"):
        found += [f"{module}:{line} calls {call}: only xfed.broker issues Redis commands"
                  for line, call in redis_calls(tree)]
    return found


@functools.lru_cache(maxsize=1)
def tree_violations() -> dict[str, list[str]]:
    files, packages = parsed()
    entries, names = entry_modules(files), set(files)
    return {m: module_violations(m, t, packages, names, entries) for m, t in files.items()}


def violations(extra: dict[str, str] | None = None) -> list[str]:
    """Every broken rule; `extra` adds files ({path under xfed/: source}) as if they were in the tree."""
    files, packages = parsed()
    added = {module_name(PACKAGE / rel, PACKAGE): ast.parse(code) for rel, code in (extra or {}).items()}
    every = {**files, **added}
    entries, names = entry_modules(every), set(every)
    found = [v for m, vs in tree_violations().items() if m not in added for v in vs]
    for module, tree in added.items():
        found += module_violations(module, tree, packages, names, entries)
    return found


def test_the_layer_rules_hold():
    assert violations() == []


@pytest.mark.parametrize("module,code,rule", [
    ("crypto/bad.py", "import torch\n", "crypto imports neither"),
    ("crypto/bad.py", "def f():\n    from redis import Redis\n", "only xfed.broker talks to Redis"),
    ("node/bad.py", "import redis\n", "only xfed.broker talks to Redis"),
    ("node/bad.py", "def f(self):\n    return self.r.hget('k', 'f')\n", "only xfed.broker issues Redis commands"),
    ("client.py", "def f(r):\n    r.xadd('s', {})\n", "only xfed.broker issues Redis commands"),
    ("config/bad.py", "from transformers import TrainingArguments\n", "only xfed.models and xfed.operators"),
    ("config/bad.py", "from xfed.operators import registry\n", "config imports no operator"),
    ("config/bad.py", "from ..operators.registry import known\n", "config imports no operator"),
    ("broker/bad.py", "import xfed\n", "no module imports the package root"),
    ("broker/bad.py", "from xfed import __version__\n", "no module imports the package root"),
    ("node/bad.py", "from xfed.crypto.pad_worker_main import main\n", "entry point, not a library"),
])
def test_a_forbidden_import_is_caught(module, code, rule):
    found = violations({module: code})
    assert any(rule in v and v.startswith(f"xfed.{module.removesuffix('.py').replace('/', '.')}:") for v in found), found
