"""TLS end to end: a private CA made with xfed.security.tls, a TLS-only redis-server, a whole job over rediss://.

Mutual TLS (`--tls-auth-clients yes`): every process presents a client certificate from the same
CA. A client trusting another CA fails at once with one line naming the address.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _integration_conftest():
    """tests/integration/conftest.py as a module (conftests are not importable under importlib mode)."""
    name = "xfed_tests_integration_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "integration" / "conftest.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


class TlsFederation(_integration_conftest().Federation):
    """The harness's own watcher connects over TLS too (the server has no plain port)."""

    pki: Path = Path()

    def redis_client(self):
        import redis

        return redis.Redis(host=self.redis.host, port=self.redis.port, ssl=True,
                           ssl_ca_certs=str(self.pki / "ca.crt"), ssl_certfile=str(self.pki / "harness.crt"),
                           ssl_keyfile=str(self.pki / "harness.key"), socket_timeout=10)


@pytest.fixture(scope="module")
def tls_fed(tmp_path_factory):
    from xfed.security.tls import issue, make_ca

    root = tmp_path_factory.mktemp("tlsfed")
    pki = root / "pki"
    make_ca(pki)
    server = issue(pki, "server", hosts=["127.0.0.1", "localhost"])
    for name in ("party", "harness"):
        issue(pki, name, client=True)
    make_ca(root / "other")   # a CA nobody in the federation trusts
    srv = _integration_conftest()._redis_server_class()(
        dir=root, tls={"cert": server.cert, "key": server.key, "ca": server.ca},
        extra_args=["--tls-auth-clients", "yes"])
    srv.start()
    fed = TlsFederation(root=root, redis=srv, namespace="tls")
    fed.pki = pki
    fed.write_config({"rounds": 2, "dim": 8, "weighting": "index",
                      "encryption": {"otp": {"key_exchange": {"key_bitlength": 2048}}}})
    conf = json.loads((fed.config / "fed_conf.json").read_text())
    conf["redis_server"] = f"rediss://127.0.0.1:{srv.port}/0"
    conf["redis"].update(tls_ca_file=str(pki / "ca.crt"), tls_cert_file=str(pki / "party.crt"),
                         tls_key_file=str(pki / "party.key"), connect_timeout=3)
    (fed.config / "fed_conf.json").write_text(json.dumps(conf, indent=1))
    try:
        fed.start_all()
        yield fed
    finally:
        fed.stop_all()
        srv.stop()


def test_whole_otp_job_over_mutual_tls(tls_fed):
    res = tls_fed.client("-c", "start")
    assert res.returncode == 0, res.stderr + tls_fed.logs()
    job = tls_fed.wait_job(res.stdout.split()[0], timeout=60)
    assert job.state.value == "SUCCESSFUL", (job, tls_fed.logs())
    clients = tls_fed.redis_client().execute_command("CLIENT", "LIST")
    assert clients.count(b"name=xfed-") >= 4  # scheduler + 3 daemons, all connected over TLS


def test_plain_connection_to_the_tls_port_is_refused(tls_fed):
    from xfed.broker.connection import connect
    from xfed.errors import BrokerError

    with pytest.raises(BrokerError) as err:
        connect(f"127.0.0.1:{tls_fed.redis.port}", retry_s=1.0)
    assert f"127.0.0.1:{tls_fed.redis.port}" in str(err.value) and "\n" not in str(err.value)


def test_wrong_ca_is_one_line_naming_the_address(tls_fed, tmp_path):
    conf = json.loads((tls_fed.config / "fed_conf.json").read_text())
    conf["redis"]["tls_ca_file"] = str(tls_fed.root / "other" / "ca.crt")
    (tmp_path / "fed_conf.json").write_text(json.dumps(conf))
    res = subprocess.run([sys.executable, str(REPO / "xfed.py"), "-c", "status", "--config_path", str(tmp_path)],
                         capture_output=True, text=True, env=tls_fed.env(), timeout=30)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: TLS handshake with Redis at rediss://127.0.0.1:") and "failed" in lines[0]
    assert f":{tls_fed.redis.port}/0" in lines[0]
