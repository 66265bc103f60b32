"""`xfed -c validate`: check a config folder and print one line per problem (exit 2) or an OK summary.

Checks fed_conf.json, every trainer_config_*.json (each stage's train_params by the operator
that `model_info.name` names), and what only the files together can tell: every node has a
file, identities match fed_info, stage counts and operators agree, label trainers' settings
that the assist trainer overrides. Paths are checked on this machine and reported as warnings
(a path on another party's machine cannot be seen from here); `strict=True` makes them errors.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from xfed.config import operator_settings
from xfed.config.fed_conf import FedConf
from xfed.config.loader import FED_CONF, check_fed_conf, read_stage_file, stage_file_name, stage_files
from xfed.config.operator_settings import OperatorSettings, OperatorUnavailable
from xfed.config.placeholders import placeholders_in
from xfed.config.problems import Problem, from_validation_error
from xfed.config.stage import Stage
from xfed.errors import ConfigError, XfedError

TRAIN_PARAMS = "train_info.train_params"


@dataclass
class NodeFile:
    """One trainer_config file as read: raw stage dicts and the valid Stage models (None where invalid)."""

    node: str
    items: list[tuple[dict, Stage | None]] | None
    params: dict[int, Any] = field(default_factory=dict)  # stage -> validated Params (when valid)


@dataclass
class Report:
    folder: Path
    problems: list[Problem] = field(default_factory=list)
    fed: FedConf | None = None
    files: dict[str, NodeFile] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def add(self, file: str, message: str, key: str = "", stage: int | None = None,
            severity: str = "error") -> None:
        self.problems.append(Problem(file=file, message=message, key=key, stage=stage, severity=severity))


def validate_folder(config_dir: str | os.PathLike, *, strict: bool = False) -> Report:
    """Every problem in the config folder (never raises for a user mistake)."""
    folder = Path(config_dir).expanduser()
    report = Report(folder=folder)
    if not folder.is_dir():
        report.add(str(folder), "config folder not found (set --config_path or XFED_CONFIG_PATH)")
        return report
    report.fed, problems = check_fed_conf(folder)
    report.problems += problems
    files = stage_files(folder)
    if not files:
        report.add(str(folder), "no trainer_config_*.json files")
    for node, _path in files.items():
        items, problems = read_stage_file(folder, node)
        report.problems += problems
        report.files[node] = NodeFile(node=node, items=items)
    _check_participants(report)
    _check_train_params(report)
    _check_across_nodes(report)
    _check_paths(report, strict=strict)
    _notes(report)
    return report


# ---------------------------------------------------------------- cross-file checks
def _check_participants(report: Report) -> None:
    fed = report.fed
    if fed is None:
        if report.files and (report.folder / FED_CONF).exists():
            report.add(FED_CONF, "has errors, so the checks across files (every node has a file, identities, "
                                 "stage counts) were skipped", severity="note")
        return
    for node in fed.node_ids:
        if node not in report.files:
            role = "the assist trainer" if node == fed.assist_trainer_id else "a trainer"
            report.add(stage_file_name(node), f"not found: {FED_CONF} lists {node!r} as {role}")
    for node, nf in report.files.items():
        role = fed.role_of(node)
        if role is None:
            report.add(stage_file_name(node), f"node {node!r} is not in {FED_CONF} fed_info "
                                              f"(trainers: {', '.join(fed.trainer_ids)}; "
                                              f"assist trainer: {fed.assist_trainer_id or 'none'})")
            continue
        for i, (raw, _stage) in enumerate(nf.items or []):
            identity = raw.get("identity")
            if isinstance(identity, str) and identity in ("label_trainer", "assist_trainer") and identity != role:
                what = "a trainer" if role == "label_trainer" else "the assist trainer"
                report.add(stage_file_name(node), f"must be {role!r}: {node!r} is {what} in {FED_CONF}, "
                                                  f"got {identity!r}", key="identity", stage=i)


def _needs_complete(report: Report, node: str, raw: dict) -> bool:
    """Whether this node's train_params must stand alone (else they are merged into the assist's).

    The assist trainer's are authoritative, so always complete; a label trainer's may be partial
    unless it is the only trainer and there is no assist trainer (XFL's 1-party demos).
    """
    fed = report.fed
    if fed is not None:
        role = fed.role_of(node) or raw.get("identity")
        return role == "assist_trainer" or (fed.assist_trainer_id is None and len(fed.trainer_ids) == 1)
    identities = [r.get("identity") for nf in report.files.values() for r, _ in (nf.items or [])[:1]]
    return raw.get("identity") == "assist_trainer" or (
        "assist_trainer" not in identities and identities.count("label_trainer") <= 1)


def _operator_config(name: Any, file: str, stage: int, report: Report) -> OperatorSettings | None:
    """The registered settings of the operator `model_info.name` names, or None (problem recorded)."""
    if not isinstance(name, str):
        return None  # the Stage model already reported it
    try:
        return operator_settings.settings_of(name)
    except OperatorUnavailable as exc:
        report.add(file, str(exc), key="model_info.name", stage=stage)
    except ConfigError as exc:
        report.add(file, str(exc).removeprefix("model_info.name: "), key="model_info.name", stage=stage)
    return None


def _check_train_params(report: Report) -> None:
    for node, nf in report.files.items():
        file = stage_file_name(node)
        for i, (raw, stage) in enumerate(nf.items or []):
            name = (raw.get("model_info") or {}).get("name") if isinstance(raw.get("model_info"), dict) else None
            settings = _operator_config(name, file, i, report)
            if settings is None:
                continue
            complete = _needs_complete(report, node, raw)
            train_info = raw.get("train_info", {})
            params = train_info.get("train_params", {}) if isinstance(train_info, dict) else None
            if not isinstance(params, dict):
                continue  # the Stage model reported the type
            try:
                nf.params[i] = settings.params.model_validate(params, context={"complete": complete})
            except ValidationError as exc:
                report.problems.extend(from_validation_error(exc, file, stage=i, prefix=TRAIN_PARAMS))
            check = settings.check_stage
            if stage is not None and check is not None:
                for key, message, *severity in check(stage, complete=complete):
                    report.add(file, message, key=key, stage=i, severity=(severity or ["error"])[0])


def _check_across_nodes(report: Report) -> None:
    fed = report.fed
    files = {n: nf for n, nf in report.files.items() if nf.items}
    if not files:
        return
    ref = fed.assist_trainer_id if fed is not None and fed.assist_trainer_id in files else sorted(files)[0]
    ref_file = stage_file_name(ref)
    ref_items = files[ref].items
    for node, nf in sorted(files.items()):
        if node == ref:
            continue
        file = stage_file_name(node)
        if len(nf.items) != len(ref_items):
            report.add(file, f"has {len(nf.items)} stage(s) but {ref_file} has {len(ref_items)}; "
                             "every node runs the same stages")
        for i, ((raw, _), (ref_raw, _)) in enumerate(zip(nf.items, ref_items, strict=False)):
            mine, theirs = _op_name(raw), _op_name(ref_raw)
            known = operator_settings.known()
            if mine not in known or theirs not in known:
                continue  # an unknown operator is reported once, where it is named
            if mine != theirs:
                report.add(file, f"{mine!r} differs from {theirs!r} in {ref_file}", key="model_info.name", stage=i)
                continue
            if ref == (fed.assist_trainer_id if fed else None) and raw.get("identity") == "label_trainer":
                _merged(report, node, i, mine)


def _op_name(raw: dict) -> str | None:
    info = raw.get("model_info")
    name = info.get("name") if isinstance(info, dict) else None
    return name if isinstance(name, str) else None


def _merged(report: Report, node: str, i: int, name: str | None) -> None:
    """Notes for a label trainer's settings the assist trainer overrides; errors if the merge is invalid."""
    nf, af = report.files[node], report.files[report.fed.assist_trainer_id]
    if i not in nf.params or i not in af.params or name is None:
        return
    try:
        settings = operator_settings.settings_of(name)
    except ConfigError:
        return  # reported where the operator is named
    merge = settings.merge_authoritative
    if merge is None:
        return
    file = stage_file_name(node)
    merged, conflicts = merge(af.params[i], nf.params[i])  # both validated above (the party's maybe partial)
    for line in conflicts:
        key, _, rest = line.partition(": ")
        report.add(file, f"{rest}; the assist trainer's value is used", key=f"{TRAIN_PARAMS}.{key}", stage=i,
                   severity="note")
    try:
        # as the label trainer reads it at stage start: the merged train_params it receives, complete
        settings.params.model_validate(merged.model_dump(mode="json", exclude_unset=True), context={"complete": True})
    except ValidationError as exc:
        for p in from_validation_error(exc, file, stage=i, prefix=TRAIN_PARAMS):
            report.add(p.file, f"{p.message} (with the assist trainer's train_params merged in)", key=p.key,
                       stage=i)


# ---------------------------------------------------------------- paths on this machine
def _check_paths(report: Report, *, strict: bool) -> None:
    severity = "error" if strict else "warning"
    for node, nf in report.files.items():
        file = stage_file_name(node)
        for i, (_raw, stage) in enumerate(nf.items or []):
            if stage is None:
                continue
            for key, path, kind in stage.paths():
                message = _path_problem(path.replace("[NODE_ID]", node).replace("[STAGE_ID]", str(i)), kind)
                if message:
                    report.add(file, message, key=key, stage=i, severity=severity)
            if "JOB_ID" not in placeholders_in(stage.output.path):
                report.add(file, "has no [JOB_ID]: every job writes into the same folder", key="output.path",
                           stage=i, severity="note")
    fed = report.fed
    if fed is not None:
        for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
            path = getattr(fed.redis, key)
            if path and not os.path.isfile(path):
                report.add(FED_CONF, f"{path}: file not found on this machine", key=f"redis.{key}", severity=severity)
        if fed.redis.password_env and fed.redis.password_env not in os.environ:
            report.add(FED_CONF, f"environment variable {fed.redis.password_env} is not set here",
                       key="redis.password_env", severity="warning")


def _path_problem(path: str, kind: str) -> str | None:
    if "JOB_ID" in placeholders_in(path):
        if kind != "output":
            return f"{path}: an input cannot depend on [JOB_ID]"
        path = path[: path.index("[JOB_ID]")] or "."
    p = Path(path)
    if kind == "input-file":
        return None if p.exists() else f"{path}: not found on this machine"
    if kind == "input-dir":
        if not p.exists():
            return f"{path}: not found on this machine"
        return None if p.is_dir() else f"{path}: not a folder"
    # output: the nearest existing ancestor must be a writable folder (the rest is created at run time)
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{path}: {probe} is not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{path}: {probe} is not writable here"
    return None


def _notes(report: Report) -> None:
    fed = report.fed
    if fed is None:
        return
    unpinned = [n for n in fed.node_ids if n not in fed.identities]
    if unpinned and _remote_broker(fed.redis_server):
        # loud on purpose: this is what a shared or hosted Redis lets anyone with write access do
        report.add(FED_CONF, f"the broker is not on this machine and {', '.join(unpinned)} pin(s) no identity: "
                             "anyone able to write to it can forge events in a node's name (fail a job, blame a "
                             "node, end a stage with made-up evidence) and replay or alter uploads. Pin every "
                             "node: `python xfed.py keygen NODE` on each machine, then list the public keys here",
                   key="identities", severity="warning")
    if fed.grpc is not None:
        tls = " (use a rediss:// redis_server for transport security)" if fed.grpc.get("use_tls") else ""
        report.add(FED_CONF, f"ignored: xfed nodes talk only through Redis{tls}", key="grpc", severity="note")
    masked = len(fed.trainer_ids)
    for node, nf in report.files.items():
        for i, params in nf.params.items():
            enc = getattr(params, "encryption", None)
            if getattr(enc, "otp", None) is not None and masked < 2 and node == (fed.assist_trainer_id or
                                                                                  fed.trainer_ids[0]):
                report.add(stage_file_name(node), f"otp with {masked} trainer: the mask cannot hide a single "
                                                  "party's update from the aggregator", key=f"{TRAIN_PARAMS}.encryption",
                           stage=i, severity="note")


def _remote_broker(redis_server: str) -> bool:
    """Whether `redis_server` is reached over the network (not embedded, a unix socket or loopback)."""
    import ipaddress

    from xfed.config.redis_address import parse_redis_server

    try:
        address = parse_redis_server(redis_server)
    except ValueError:
        return False
    if address.kind not in ("tcp", "cluster", "sentinel"):
        return False

    def remote(host: str) -> bool:
        if host == "localhost":
            return False
        try:
            return not ipaddress.ip_address(host.strip("[]")).is_loopback
        except ValueError:
            return True  # a host name other than localhost

    return any(remote(h) for h in address.hosts)


# ---------------------------------------------------------------- output
def _summary(report: Report) -> str:
    fed = report.fed
    assert fed is not None
    stages = []
    ref = fed.assist_trainer_id or fed.trainer_ids[0]
    nf = report.files.get(ref)
    for i, (raw, _stage) in enumerate(nf.items if nf and nf.items else []):
        bits = [_op_name(raw) or "?", *_describe(nf.params.get(i))]
        stages.append(f"stage {i}: {' '.join(bits)}")
    assist = fed.assist_trainer_id or "none"
    return (f"OK {report.folder}: trainers {', '.join(fed.trainer_ids)}; assist trainer {assist}; "
            f"redis {fed.redis_address.display()}; {'; '.join(stages)}")


def _describe(params: Any) -> list[str]:
    """A few words on a validated Params of any operator (peft kind, encryption, agg_steps)."""
    bits = []
    peft = getattr(params, "peft", None)
    if getattr(peft, "kind", None):
        bits.append(peft.kind)
    enc = getattr(params, "encryption", None)
    if isinstance(enc, dict) and len(enc) == 1:
        bits.append(next(iter(enc)))
    elif getattr(enc, "method", None):
        bits.append(enc.method)
    agg_steps = getattr(getattr(params, "aggregation", None), "agg_steps", None)
    if agg_steps is not None:
        bits.append(f"agg_steps={agg_steps}")
    return bits


def print_report(report: Report, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Errors one per line on `out` (stdout); warnings/notes on `err` (stderr); returns 0 or 2."""
    out, err = out or sys.stdout, err or sys.stderr
    for p in report.problems:
        if p.severity != "error":
            print(f"{p.severity}: {p}", file=err)
    errors = report.errors
    for p in errors:
        print(str(p), file=out)
    if errors:
        print(f"{len(errors)} problem(s) in {report.folder}", file=err)
        return 2
    print(_summary(report), file=out)
    return 0


def validate_command(config_path: str | os.PathLike, schema: bool = False, strict: bool = False) -> int:
    """The `-c validate [--schema]` verb: prints and returns the exit code."""
    if schema:
        from xfed.config.schema import config_schema

        print(json.dumps(config_schema(), indent=2, ensure_ascii=False))
        return 0
    try:
        return print_report(validate_folder(config_path, strict=strict))
    except XfedError:
        raise
    except Exception as exc:  # a bug of ours must still not greet the user with a traceback
        if os.environ.get("XFED_DEBUG"):
            raise
        print(f"error: validation failed unexpectedly: {type(exc).__name__}: {exc} "
              "(a bug in xfed: please report it; XFED_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2
