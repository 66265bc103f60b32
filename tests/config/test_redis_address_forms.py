"""redis_server forms for Redis Cluster and Sentinel (and the query keys every form refuses)."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from xfed.config import FedConf, RedisAddress, parse_redis_server
from xfed.config.redis_address import DEFAULT_SENTINEL_PORT

FED = {"fed_info": {"trainer": {"node-1": ""}, "assist_trainer": {}}}


@pytest.mark.parametrize("spec, kind, nodes, extra", [
    ("redis+cluster://10.0.0.1:7000,10.0.0.2:7001", "cluster", (("10.0.0.1", 7000), ("10.0.0.2", 7001)), {}),
    ("redis+cluster://h1", "cluster", (("h1", 6379),), {}),
    ("redis+cluster://h1:7000/", "cluster", (("h1", 7000),), {}),
    ("rediss+cluster://alice:s%40cret@h1:7000,[::1]:7001", "cluster", (("h1", 7000), ("::1", 7001)),
     {"tls": True, "username": "alice", "password": "s@cret"}),
    ("redis+sentinel://s1:26379,s2/mymaster", "sentinel", (("s1", 26379), ("s2", DEFAULT_SENTINEL_PORT)),
     {"master_name": "mymaster", "db": 0}),
    ("rediss+sentinel://u:pw@s1:5000/m-1.a?db=3&sentinel_password=spw&sentinel_username=su", "sentinel",
     (("s1", 5000),), {"master_name": "m-1.a", "db": 3, "tls": True, "username": "u", "password": "pw",
                       "sentinel_password": "spw", "sentinel_username": "su"}),
])
def test_cluster_and_sentinel_forms_parse(spec, kind, nodes, extra):
    a = parse_redis_server(spec)
    assert (a.kind, a.nodes) == (kind, nodes)
    for k, v in extra.items():
        assert getattr(a, k) == v, k
    assert (a.host, a.port) == nodes[0]
    assert parse_redis_server(a.url()) == a  # the URL it prints reads back the same
    assert "s@cret" not in a.display() and "pw" not in a.display().replace("sentinel", "") and "spw" not in repr(a)


@pytest.mark.parametrize("spec, words", [
    ("redis://h:6379?cluster=true", "unknown query key 'cluster' for redis://"),
    ("redis+cluster://h1:7000?read_from_replicas=1", "unknown query key 'read_from_replicas'"),
    ("redis+sentinel://s1/m?socket_timeout=3", "unknown query key 'socket_timeout' for redis+sentinel://"),
    ("unix:///r.sock?timeout=1", "unknown query key 'timeout' for unix://"),
    ("redis+cluster://h1:7000/2", "only database 0"),
    ("redis+cluster://h1:7000?db=0", "unknown query key 'db'"),
    ("redis+sentinel://s1:26379", "needs the master's name"),
    ("redis+sentinel://s1:26379/bad name", "master name"),
    ("redis+cluster://h1:7000,,h2", "empty host"),
    ("redis+cluster://h1:7000,h1:7000", "listed twice"),
    ("redis+cluster://h1:99999", "port '99999'"),
    ("redis+sentinel://s1/m?db=x", "database 'x'"),
    ("redis+sentinel://s1/m?db=1&db=2", "given twice"),
    ("redis+sentinel://s1/m?db", "has no value"),
    ("redis://h:1/2?db=2", "given twice"),
    ("redis+foo://h", "scheme 'redis+foo'"),
])
def test_bad_forms_are_one_line_errors_naming_the_problem(spec, words):
    with pytest.raises(ValueError) as info:
        parse_redis_server(spec)
    assert words in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValidationError, match="redis_server"):
        FedConf.model_validate({**FED, "redis_server": spec})


def test_password_in_a_refused_url_is_not_echoed():
    from xfed.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        RedisAddress.parse("redis+cluster://u:topsecret@h1:7000?x=1")
    assert "topsecret" not in str(info.value) and "'x'" in str(info.value)


def test_client_kwargs_for_cluster_carry_no_db_and_tls_files_apply():
    fed = FedConf.model_validate({**FED, "redis_server": "rediss+cluster://u@h1:7000,h2:7001",
                                  "redis": {"password": "pw", "tls_ca_file": "/ca.pem"}})
    kw = fed.redis_address.client_kwargs()
    assert "db" not in kw and "host" not in kw
    assert (kw["username"], kw["password"], kw["ssl"], kw["ssl_ca_certs"]) == ("u", "pw", True, "/ca.pem")
    with pytest.raises(ValidationError, match="TLS files need a rediss://"):
        FedConf.model_validate({**FED, "redis_server": "redis+cluster://h1:7000", "redis": {"tls_ca_file": "/ca"}})


@pytest.mark.parametrize("spec, window, expected", [
    ("redis+cluster://h1:7000", None, 30.0), ("redis+sentinel://s1/m", None, 30.0), ("h:6379", None, 0.0),
    ("embedded", None, 0.0), ("redis+sentinel://s1/m", 12, 12.0), ("h:6379", 5, 5.0),
])
def test_failover_window_defaults_by_topology(spec, window, expected):
    redis = {"failover_window": window} if window is not None else {}
    assert FedConf.model_validate({**FED, "redis_server": spec, "redis": redis}).failover_window_s == expected


@pytest.mark.parametrize("bad", [-1, 3601, "x", True])
def test_failover_window_is_validated(bad):
    with pytest.raises(ValidationError, match="failover_window"):
        FedConf.model_validate({**FED, "redis_server": "h:1", "redis": {"failover_window": bad}})
