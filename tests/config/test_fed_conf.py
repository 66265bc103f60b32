"""FedConf: XFL's fed_conf.json unchanged, what CONTRACTS.md promises, redis_server forms."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from xfed.config import FedConf, RedisAddress, parse_redis_server

XFL_FED = {
    "fed_info": {"scheduler": {"scheduler": "localhost:55001"},
                 "trainer": {"node-2": "localhost:56002", "node-1": "localhost:56001"},
                 "assist_trainer": {"assist_trainer": "localhost:55002"}},
    "redis_server": "localhost:6379",
    "grpc": {"use_tls": False},
}


def test_xfl_fed_conf_gives_the_contract_fields_with_defaults():
    fed = FedConf.model_validate(XFL_FED)
    assert fed.trainer_ids == ["node-1", "node-2"]
    assert fed.assist_trainer_id == "assist_trainer"
    assert fed.node_ids == ["node-1", "node-2", "assist_trainer"]
    assert fed.redis_server == "localhost:6379"
    assert fed.redis.namespace == "xfed" and fed.heartbeat_interval == 2.0 and fed.identities == {}
    assert fed.role_of("node-1") == "label_trainer" and fed.role_of("assist_trainer") == "assist_trainer"
    assert fed.role_of("node-9") is None


def test_redis_server_defaults_to_embedded():
    fed = FedConf.model_validate({"fed_info": {"trainer": {"node-1": None}}})
    assert fed.redis_server == "embedded" and fed.redis_address.embedded
    assert fed.assist_trainer_id is None and fed.node_ids == ["node-1"]


@pytest.mark.parametrize("spec,expected", [
    ("embedded", RedisAddress(kind="embedded")),
    ("localhost:6380", RedisAddress(kind="tcp", host="localhost", port=6380)),
    ("redis-host", RedisAddress(kind="tcp", host="redis-host", port=6379)),
    ("[::1]:7000", RedisAddress(kind="tcp", host="::1", port=7000)),
    ("redis://alice:s%40cret@h.example:6390/3",
     RedisAddress(kind="tcp", host="h.example", port=6390, db=3, username="alice", password="s@cret")),
    ("rediss://:pw@h.example", RedisAddress(kind="tcp", host="h.example", port=6379, password="pw", tls=True)),
    ("unix:///run/redis.sock", RedisAddress(kind="unix", unix_socket="/run/redis.sock")),
])
def test_redis_server_forms_parse(spec, expected):
    address = parse_redis_server(spec)
    assert address == expected and address.password == expected.password


def test_redis_address_never_shows_the_password():
    address = parse_redis_server("rediss://alice:topsecret@h:6390/1")
    assert "topsecret" not in repr(address) and "topsecret" not in address.display()
    assert address.display() == "rediss://alice@h:6390/1"
    assert address.client_kwargs() == {"db": 1, "username": "alice", "password": "topsecret", "host": "h",
                                       "port": 6390, "ssl": True, "ssl_ca_certs": None, "ssl_certfile": None,
                                       "ssl_keyfile": None, "ssl_cert_reqs": "required"}


@pytest.mark.parametrize("spec", ["", "host:0", "host:70000", "host:x", "ftp://h", "redis://", "redis://h/x",
                                  "a:b:c", "unix://"])
def test_bad_redis_server_is_a_one_line_error(spec):
    with pytest.raises(ValueError) as info:
        parse_redis_server(spec)
    assert "\n" not in str(info.value)


def test_redis_options_identities_and_tls_rules():
    key = "ab" * 32
    fed = FedConf.model_validate({**XFL_FED, "redis_server": "rediss://h:6380",
                                  "redis": {"namespace": "fed:a", "tls_ca_file": "ca.pem", "password_env": "PW"},
                                  "identities": {"node-1": key}, "heartbeat_interval": 0.5})
    assert fed.redis.namespace == "fed:a" and fed.identities == {"node-1": key} and fed.heartbeat_interval == 0.5
    with pytest.raises(ValidationError, match="TLS files need a rediss:// redis_server"):
        FedConf.model_validate({**XFL_FED, "redis": {"tls_ca_file": "ca.pem"}})
    with pytest.raises(ValidationError, match="is not a node in fed_info"):
        FedConf.model_validate({**XFL_FED, "identities": {"node-7": key}})
    with pytest.raises(ValidationError, match="tls_cert_file and tls_key_file go together"):
        FedConf.model_validate({**XFL_FED, "redis": {"tls_cert_file": "c.pem"}})


def test_redis_address_carries_the_redis_options(monkeypatch):
    monkeypatch.setenv("XFED_TEST_PW", "pw")
    fed = FedConf.model_validate({**XFL_FED, "redis_server": "rediss://u@h:6380/1",
                                  "redis": {"tls_ca_file": "/ca.pem", "password_env": "XFED_TEST_PW"}})
    kw = fed.redis_address.client_kwargs()
    assert (kw["username"], kw["password"], kw["ssl_ca_certs"], kw["db"]) == ("u", "pw", "/ca.pem", 1)
    unix = FedConf.model_validate({**XFL_FED, "redis_server": "unix:///tmp/r.sock?db=2"}).redis_address
    assert unix.client_kwargs()["db"] == 2 and unix.client_kwargs()["unix_socket_path"] == "/tmp/r.sock"


def test_password_env_is_read_at_use(monkeypatch):
    fed = FedConf.model_validate({**XFL_FED, "redis": {"password_env": "XFED_TEST_PW"}})
    monkeypatch.setenv("XFED_TEST_PW", "from-env")
    assert fed.redis.resolved_password() == "from-env"


@pytest.mark.parametrize("bad", ["node 1", "../x", "", "-x", "a" * 65])
def test_node_ids_must_be_safe_names(bad):
    with pytest.raises(ValidationError, match="bad node id"):
        FedConf.model_validate({"fed_info": {"trainer": {bad: None}}})


def test_comment_keys_are_ignored_but_typos_are_not():
    fed = FedConf.model_validate({**XFL_FED, "_comment": "human notes"})
    assert fed.trainer_ids == ["node-1", "node-2"]
    with pytest.raises(ValidationError, match="did you mean 'heartbeat_interval'"):
        FedConf.model_validate({**XFL_FED, "heartbeat_intervall": 1})


def test_max_concurrent_jobs_defaults_to_one_and_is_a_whole_number_from_1():
    assert FedConf.model_validate(XFL_FED).max_concurrent_jobs == 1
    assert FedConf.model_validate({**XFL_FED, "max_concurrent_jobs": 3}).max_concurrent_jobs == 3
    for bad, words in ((0, "greater than or equal to 1"), ("2", "valid integer"), (2.5, "valid integer"),
                       (True, "valid integer"), (65, "less than or equal to 64")):
        with pytest.raises(ValidationError, match=words) as info:
            FedConf.model_validate({**XFL_FED, "max_concurrent_jobs": bad})
        assert info.value.errors()[0]["loc"] == ("max_concurrent_jobs",)
