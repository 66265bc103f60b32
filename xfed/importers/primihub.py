"""`xfed import-primihub ChatGlm.json OUT_DIR`: a PrimiHub ChatGLM federation as an xfed config folder.

PrimiHub's job file (example/FL/chatglm/ChatGlm.json in its guide): `party_info` (gRPC addresses),
`component_params.roles` (`server`: the aggregator, `client`: the trainers), `common_params`
(`aggration_iter` aggregations of `train_iter` optimizer steps each) and per-party `role_params`
(THUDM ptuning's `train_file`, `validation_file`, `prompt_column`, `response_column`, `history_column`,
`model_name_or_path`, `output_dir`, relative to the party's ChatGLM-6B `path`, and `num_examples`).
PrimiHub's client runs THUDM's ptuning/main.py with fixed settings (PRE_SEQ_LEN=128, LR=2e-2, batch 1,
64-token source and target, quantization_bit 4); those become the xfed settings unless role_params
give `pre_seq_len`, `learning_rate` or `quantization_bit` themselves.

Mapping: server -> the assist trainer (aggregates only), clients -> label trainers; rounds =
aggration_iter with agg_steps = train_iter steps (trainer.max_steps = aggration_iter * train_iter);
pre_seq_len -> peft.PREFIX_TUNING; quantization -> model_info.config.quantization_bit; per-party
data files and columns -> input.trainset / valset and the party's dataset columns. What has no
equivalent is returned (and printed) one line each. Reads JSON only; writes nothing when any target
file exists already.
"""
from __future__ import annotations

import json
import os
import posixpath
from pathlib import Path
from typing import Any

from xfed.errors import ConfigError

# what PrimiHub's ChatGlmClient passes to THUDM's main.py on every aggregation iteration
PRIMIHUB_PTUNING = {"pre_seq_len": 128, "learning_rate": 2e-2, "per_device_train_batch_size": 1,
                    "gradient_accumulation_steps": 1, "max_source_length": 64, "max_target_length": 64,
                    "quantization_bit": 4}
KNOWN_ROLE_KEYS = {"path", "train_file", "validation_file", "prompt_column", "response_column", "history_column",
                   "model_name_or_path", "output_dir", "num_examples", "pre_seq_len", "learning_rate",
                   "quantization_bit", "max_source_length", "max_target_length", "per_device_train_batch_size"}
THUDM_METRICS = ["rouge-1", "rouge-2", "rouge-l", "bleu-4"]


def _load(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a JSON object (PrimiHub's ChatGlm.json)")
    return doc


def _need(obj: Any, key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ConfigError(f"{where}.{key}: required key is missing")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}.{key}: expected {names}, got {type(value).__name__}")
    return value


def _joined(base: str | None, path: str) -> str:
    """A role_params path as the party's main.py saw it: relative to its ChatGLM-6B `path` (os.chdir there)."""
    if not base or path.startswith(("/", "~")):
        return path
    return posixpath.join(base, path)


def convert(doc: dict[str, Any], source: str = "ChatGlm.json") -> tuple[dict[str, Any], dict[str, list], list[str]]:
    """(fed_conf, {node: trainer_config stages}, notes) for a PrimiHub ChatGLM job document."""
    from xfed.config.fed_conf import NODE_ID_RE, NODE_ID_RULE

    comp = doc.get("component_params", doc)
    where = f"{source}: component_params" if "component_params" in doc else source
    roles = _need(comp, "roles", where, dict)
    server = _need(roles, "server", f"{where}.roles", str)
    clients = _need(roles, "client", f"{where}.roles", (list, str))
    clients = [clients] if isinstance(clients, str) else clients
    if not clients or not all(isinstance(c, str) for c in clients):
        raise ConfigError(f"{where}.roles.client: expected a list of party names")
    for name in [server, *clients]:
        if not NODE_ID_RE.match(name):
            raise ConfigError(f"{where}.roles: party {name!r} cannot be an xfed node id: {NODE_ID_RULE}")
    if server in clients or len(set(clients)) != len(clients):
        raise ConfigError(f"{where}.roles: a party is named twice")
    common = _need(comp, "common_params", where, dict)
    rounds = _need(common, "aggration_iter", f"{where}.common_params", int)
    steps = _need(common, "train_iter", f"{where}.common_params", int)
    if rounds < 1 or steps < 1:
        raise ConfigError(f"{where}.common_params: aggration_iter and train_iter must be >= 1")
    process = common.get("process", "train")
    if process != "train":
        raise ConfigError(f"{where}.common_params.process: {process!r} has no xfed equivalent (only 'train')")
    role_params = _need(comp, "role_params", where, dict)
    notes: list[str] = []

    parties: dict[str, dict[str, Any]] = {}
    for name in clients:
        rp = _need(role_params, name, f"{where}.role_params", dict)
        loc = f"{where}.role_params.{name}"
        for key in ("train_file", "prompt_column", "response_column", "model_name_or_path"):
            _need(rp, key, loc, str)
        parties[name] = rp
        for key in sorted(set(rp) - KNOWN_ROLE_KEYS):
            notes.append(f"role_params.{name}.{key}: not a PrimiHub ChatGLM key xfed knows; ignored")

    first = parties[clients[0]]
    shared = {k: first.get(k, v) for k, v in PRIMIHUB_PTUNING.items()}
    for key in PRIMIHUB_PTUNING:
        values = {json.dumps(p.get(key, PRIMIHUB_PTUNING[key])) for p in parties.values()}
        if len(values) > 1:
            notes.append(f"role_params.*.{key}: parties differ ({', '.join(sorted(values))}); "
                         f"{clients[0]}'s value {shared[key]} is used by everyone (xfed shares it)")
    models = {p["model_name_or_path"] for p in parties.values()}
    if len(models) > 1:
        notes.append("role_params.*.model_name_or_path: parties name different folders; each keeps its own path, "
                     "but preflight requires the same model files everywhere")

    fed_info_addr = doc.get("party_info") or {}
    fed_conf = {
        "fed_info": {
            "scheduler": {"scheduler": str(fed_info_addr.get("task_manager", "localhost:0"))},
            "trainer": {c: _address(fed_info_addr.get(c)) for c in clients},
            "assist_trainer": {server: _address(fed_info_addr.get(server))},
        },
        "redis_server": "localhost:6379",
        "redis": {"namespace": "xfed_primihub"},
    }
    notes.append("party_info (ip, port, use_tls) and task_manager: xfed parties meet through one Redis server; "
                 "set redis_server in fed_conf.json (written as localhost:6379)")

    trainer = {"per_device_train_batch_size": shared["per_device_train_batch_size"],
               "gradient_accumulation_steps": shared["gradient_accumulation_steps"],
               "learning_rate": shared["learning_rate"], "max_steps": rounds * steps,
               "lr_scheduler_type": "linear", "report_to": "none"}
    train_params = {
        "aggregation": {"agg_steps": steps, "weighting": "num_examples"},
        "encryption": {"otp": {}},
        "peft": {"PREFIX_TUNING": {"task_type": "CAUSAL_LM", "pre_seq_len": shared["pre_seq_len"],
                                   "prefix_projection": False}},
        "trainer": trainer,
        "dataset": {"max_src_length": shared["max_source_length"], "max_dst_length": shared["max_target_length"],
                    "prompt_pattern": "{}", "metrics": ["exact_match", *THUDM_METRICS]},
    }
    notes.append(f"common_params.train_iter: PrimiHub runs train_iter + 1 = {steps + 1} steps per aggregation "
                 f"and keeps checkpoint-{steps}; xfed runs {steps} steps per round")
    notes.append("learning-rate schedule: PrimiHub restarts main.py's linear decay every aggregation; xfed decays "
                 f"once over all {rounds * steps} steps")
    notes.append("aggregation: PrimiHub's server averages plaintext prefixes; xfed masks each update (otp), "
                 "so the aggregator sees only the sum")
    model_config = {"quantization_bit": shared["quantization_bit"]} if shared["quantization_bit"] else {}

    stages: dict[str, list] = {}
    out_base = "output"
    for name, rp in parties.items():
        base = rp.get("path")
        if base is not None and not isinstance(base, str):
            raise ConfigError(f"{where}.role_params.{name}.path: expected str, got {type(base).__name__}")
        dataset = {"prompt_column": rp["prompt_column"], "response_column": rp["response_column"]}
        if rp.get("history_column"):
            dataset["history_column"] = str(rp["history_column"])
        inputs: dict[str, Any] = {
            "trainset": [{"type": "json", "path": _joined(base, rp["train_file"])}],
            "pretrained_model": {"path": rp["model_name_or_path"]},
        }
        if isinstance(rp.get("validation_file"), str):
            inputs["valset"] = [{"type": "json", "path": _joined(base, rp["validation_file"])}]
        output_dir = rp.get("output_dir") if isinstance(rp.get("output_dir"), str) else f"{out_base}/{name}"
        stages[name] = [{
            "identity": "label_trainer",
            "model_info": {"name": "horizontal_chatglm", "config": dict(model_config)},
            "input": inputs,
            "output": {"path": posixpath.join(_joined(base, output_dir), "[JOB_ID]")},
            "train_info": {"train_params": {
                "trainer": {"per_device_train_batch_size": trainer["per_device_train_batch_size"]},
                "dataset": dataset,
            }},
        }]
        if "num_examples" in rp:
            notes.append(f"role_params.{name}.num_examples ({rp['num_examples']}): xfed weights each party by the "
                         "examples it actually loads, not a declared count")
        if base:
            notes.append(f"role_params.{name}.path: no xfed equivalent (no ChatGLM-6B checkout is run); "
                         "relative files were joined to it")
    server_params = role_params.get(server) if isinstance(role_params.get(server), dict) else {}
    stages[server] = [{
        "identity": "assist_trainer",
        "model_info": {"name": "horizontal_chatglm", "config": dict(model_config)},
        "input": {"pretrained_model": {"path": server_params.get("model_name_or_path", first["model_name_or_path"])}},
        "output": {"path": posixpath.join(server_params.get("output_dir", f"{out_base}/{server}"), "[JOB_ID]")},
        "train_info": {"train_params": train_params},
    }]
    if "model_name_or_path" not in server_params:
        notes.append(f"roles.server {server}: PrimiHub's server holds no model; xfed's assist trainer loads the base "
                     f"model too (set to {clients[0]}'s model_name_or_path)")
    return fed_conf, stages, notes


def _address(info: Any) -> str:
    if isinstance(info, dict) and "ip" in info and "port" in info:
        return f"{info['ip']}:{info['port']}"
    return "localhost:0"


def import_primihub(source: str | os.PathLike, out_dir: str | os.PathLike) -> tuple[list[Path], list[str]]:
    """Write fed_conf.json and trainer_config_{party}.json into out_dir; (files written, notes)."""
    source = Path(source).expanduser()
    fed_conf, stages, notes = convert(_load(source), source.name)
    out = Path(out_dir).expanduser()
    targets = {out / "fed_conf.json": fed_conf}
    targets.update({out / f"trainer_config_{node}.json": stage for node, stage in stages.items()})
    existing = [str(p) for p in targets if p.exists()]
    if existing:
        raise ConfigError(f"{existing[0]}: exists already; nothing written (choose an empty OUT_DIR)")
    out.mkdir(parents=True, exist_ok=True)
    for path, obj in targets.items():
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    return list(targets), notes


def import_command(source: str, out_dir: str) -> int:
    import click

    written, notes = import_primihub(source, out_dir)
    click.echo(f"wrote {len(written)} files to {out_dir}: {', '.join(p.name for p in written)}")
    click.echo(f"not mapped or mapped differently ({len(notes)}):")
    for line in notes:
        click.echo(f"  - {line}")
    click.echo(f"check it: python xfed.py -c validate --config_path {out_dir}")
    return 0
