"""Config files: pydantic models of fed_conf.json / trainer_config_{NODE_ID}.json, loading, placeholders.

See docs/CONFIG.md for every key and docs/CONTRACTS.md for what other layers may rely on.
"""
from xfed.config.fed_conf import FedConf, FedInfo, RedisOptions
from xfed.config.loader import check_fed_conf, check_stages, load_fed_conf, load_stages, stage_file_name
from xfed.config.placeholders import PLACEHOLDERS, fill_placeholders, resolve_path
from xfed.config.problems import Problem
from xfed.config.redis_address import RedisAddress, parse_redis_server
from xfed.config.stage import Stage

__all__ = [
    "FedConf", "FedInfo", "PLACEHOLDERS", "Problem", "RedisAddress", "RedisOptions", "Stage", "check_fed_conf",
    "check_stages", "fill_placeholders", "load_fed_conf", "load_stages", "parse_redis_server", "resolve_path",
    "stage_file_name",
]
