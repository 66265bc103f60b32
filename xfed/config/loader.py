"""Loading fed_conf.json and trainer_config_{NODE_ID}.json from a config folder.

`check_*` return (model or None, problems) and never raise, for `-c validate`; `load_*` raise
ConfigError with the first problem, for the daemons. Relative paths are resolved against the
folder of the file that holds them; [JOB_ID]/[NODE_ID]/[STAGE_ID] are kept for run time.
"""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from xfed.config.fed_conf import NODE_ID_RE, FedConf
from xfed.config.jsonfile import read_json
from xfed.config.placeholders import resolve_path
from xfed.config.problems import Problem, errors_only, from_validation_error, raise_first
from xfed.config.stage import Stage
from xfed.errors import ConfigError

FED_CONF = "fed_conf.json"
STAGE_FILE_PREFIX = "trainer_config_"


def stage_file_name(node_id: str) -> str:
    return f"{STAGE_FILE_PREFIX}{node_id}.json"


def config_folder(config_dir: str | os.PathLike) -> Path:
    """The config folder as a Path; ConfigError if it is not a folder."""
    folder = Path(config_dir).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{folder}: config folder not found (set --config_path or XFED_CONFIG_PATH)")
    return folder


def stage_files(config_dir: str | os.PathLike) -> dict[str, Path]:
    """{node id: path} of every trainer_config_*.json in the folder."""
    out = {}
    for path in sorted(Path(config_dir).glob(f"{STAGE_FILE_PREFIX}*.json")):
        out[path.name[len(STAGE_FILE_PREFIX):-len(".json")]] = path
    return out


def check_fed_conf(config_dir: str | os.PathLike) -> tuple[FedConf | None, list[Problem]]:
    """(FedConf with resolved paths, []) or (None, problems) for the folder's fed_conf.json."""
    folder = Path(config_dir)
    data, problems = read_json(folder / FED_CONF, FED_CONF)
    if data is None:
        return None, problems
    if not isinstance(data, dict):
        return None, problems + [Problem(FED_CONF, f"must be a JSON object, got {type(data).__name__}")]
    try:
        fed = FedConf.model_validate(data)
    except ValidationError as exc:
        return None, problems + from_validation_error(exc, FED_CONF)
    # Files named in fed_conf.json are relative to it, like every other path in a config.
    updates = {k: resolve_path(v, folder) for k in ("tls_ca_file", "tls_cert_file", "tls_key_file", "embedded_dir")
               if (v := getattr(fed.redis, k))}
    if updates:
        fed = fed.model_copy(update={"redis": fed.redis.model_copy(update=updates)})
    fed._config_dir = folder.resolve()
    return (fed if not errors_only(problems) else None), problems


def read_stage_file(config_dir: str | os.PathLike, node_id: str
                    ) -> tuple[list[tuple[dict, Stage | None]] | None, list[Problem]]:
    """([(raw stage dict, Stage with resolved paths or None if invalid)], problems) for one node's file."""
    name = stage_file_name(node_id)
    folder = Path(config_dir)
    if not NODE_ID_RE.match(node_id):
        return None, [Problem(name, f"bad node id {node_id!r} in the file name")]
    data, problems = read_json(folder / name, name, stages=True)
    if data is None:
        return None, problems
    if not isinstance(data, list):
        return None, problems + [Problem(name, f"must be a JSON list of stages, got {type(data).__name__}")]
    if not data:
        return None, problems + [Problem(name, "has no stages (the list is empty)")]
    items: list[tuple[dict, Stage | None]] = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            problems.append(Problem(name, f"must be a JSON object, got {type(item).__name__}", stage=i))
            items.append(({}, None))
            continue
        try:
            items.append((item, Stage.model_validate(item).resolved(folder)))
        except ValidationError as exc:
            problems += from_validation_error(exc, name, stage=i)
            items.append((item, None))
    return items, problems


def check_stages(config_dir: str | os.PathLike, node_id: str) -> tuple[list[Stage] | None, list[Problem]]:
    """(stages with resolved paths, problems) for trainer_config_{node_id}.json; None if any is invalid."""
    items, problems = read_stage_file(config_dir, node_id)
    if items is None or errors_only(problems):
        return None, problems
    return [stage for _raw, stage in items], problems


def load_fed_conf(config_dir: str | os.PathLike) -> FedConf:
    """fed_conf.json of the folder as a FedConf; ConfigError (one line) if anything is wrong."""
    folder = config_folder(config_dir)
    fed, problems = check_fed_conf(folder)
    raise_first(problems, hint="; run `xfed -c validate`")
    assert fed is not None
    return fed


def load_stages(config_dir: str | os.PathLike, node_id: str) -> list[Stage]:
    """The stages of trainer_config_{node_id}.json, paths resolved; ConfigError if anything is wrong."""
    folder = config_folder(config_dir)
    stages, problems = check_stages(folder, node_id)
    raise_first(problems, hint="; run `xfed -c validate`")
    assert stages is not None
    return stages
