"""JSON schema of fed_conf.json and trainer_config_{NODE_ID}.json (`xfed -c validate --schema`)."""
from __future__ import annotations

from typing import Any

from xfed.config import operator_settings
from xfed.config.fed_conf import FedConf
from xfed.config.stage import Stage

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def operator_schemas() -> dict[str, Any]:
    """{operator name: JSON schema of its train_params} for every operator whose config imports."""
    out: dict[str, Any] = {}
    for name in operator_settings.known():
        try:
            out[name] = operator_settings.settings_of(name).params.model_json_schema()
        except Exception as exc:  # an operator not built yet is listed, not fatal
            out[name] = {"description": f"not available: {type(exc).__name__}: {exc}"}
    return out


def config_schema() -> dict[str, Any]:
    """One document: the two file schemas plus each operator's train_params schema."""
    stage = Stage.model_json_schema()
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "xfed configuration",
        "description": "fed_conf.json and trainer_config_{NODE_ID}.json (a list of stages); "
                       "train_info.train_params follows the schema of the operator named by model_info.name.",
        "fed_conf.json": {"$schema": SCHEMA_DIALECT, **FedConf.model_json_schema()},
        "trainer_config_{NODE_ID}.json": {"$schema": SCHEMA_DIALECT, "type": "array", "minItems": 1,
                                          "items": stage},
        "train_params": operator_schemas(),
    }


__all__ = ["config_schema", "operator_schemas"]
