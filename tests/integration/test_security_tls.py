"""TLS end to end, with everything else on too: a private CA (xfed.security.tls), a TLS-only
redis-server with mutual TLS, ACL users from scripts/redis_acl.py applied over TLS, each process in
its own config folder as its own user, identities pinned, and a whole otp job.

A client trusting another CA fails at once with one line naming the address.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, PartyFederation, connected_users, serve

pytestmark = pytest.mark.integration

NS = "tls"
ADMIN_PW = "admin-tls-password-0123456789"


@dataclass
class HardenedFederation(PartyFederation):
    """A PartyFederation whose harness watches over TLS (the server has no plain port and `default` is off)."""

    pki: Path = Path()

    def tls_kwargs(self) -> dict:
        return dict(host=self.redis.host, port=self.redis.port, ssl=True, ssl_ca_certs=str(self.pki / "ca.crt"),
                    ssl_certfile=str(self.pki / "harness.crt"), ssl_keyfile=str(self.pki / "harness.key"),
                    socket_timeout=30)

    def redis_client(self):
        import redis

        return redis.Redis(username="admin", password=self.admin_password, **self.tls_kwargs())


@pytest.fixture(scope="module")
def tls_fed(tmp_path_factory):
    import redis

    from xfed.security.identity import default_key_path, generate, write_private_key
    from xfed.security.tls import issue, make_ca

    root = tmp_path_factory.mktemp("tlsfed")
    pki = root / "pki"
    make_ca(pki)
    server = issue(pki, "server", hosts=["127.0.0.1", "localhost"])
    for name in ("party", "harness"):
        issue(pki, name, client=True)
    make_ca(root / "other")   # a CA nobody in the federation trusts
    with serve(root, HardenedFederation, tls={"cert": server.cert, "key": server.key, "ca": server.ca},
               redis_args=["--tls-auth-clients", "yes"], namespace=NS, admin_password=ADMIN_PW, pki=pki) as fed:
        srv = fed.redis
        fed.write_config({"rounds": 2, "dim": 8, "weighting": "index",
                          "encryption": {"otp": {"key_exchange": {"key_bitlength": 2048}}}})
        conf = json.loads((fed.config / "fed_conf.json").read_text())
        conf["redis_server"] = f"rediss://127.0.0.1:{srv.port}/0"
        conf["redis"].update(tls_ca_file=str(pki / "ca.crt"), tls_cert_file=str(pki / "party.crt"),
                             tls_key_file=str(pki / "party.key"), connect_timeout=20)
        keys = {n: generate(n) for n in fed.trainers}
        conf["identities"] = {n: k.public_hex for n, k in keys.items()}
        (fed.config / "fed_conf.json").write_text(json.dumps(conf, indent=1))
        boot = redis.Redis(**fed.tls_kwargs())   # `default` (no password) only until the users exist
        boot.execute_command("ACL", "SETUSER", "admin", "on", f">{ADMIN_PW}", "~*", "&*", "+@all")
        boot.close()
        res = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "redis_acl.py"), "--config_path", str(fed.config),
             "--passwords", str(root / "pw.json"), "--configs", str(root / "parties"), "--apply",
             "--admin-tls-ca-file", str(pki / "ca.crt"), "--admin-tls-cert-file", str(pki / "harness.crt"),
             "--admin-tls-key-file", str(pki / "harness.key")],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "XFED_REDIS_ADMIN_URL": f"rediss://admin:{ADMIN_PW}@127.0.0.1:{srv.port}/0"})
        assert res.returncode == 0, res.stderr
        fed.redis_client().execute_command("ACL", "SETUSER", "default", "off")
        for n in fed.nodes:
            shutil.copy(fed.config / f"trainer_config_{n}.json", fed.party_config(n))
        for n, key in keys.items():
            write_private_key(key, default_key_path(fed.party_config(n), n))
        fed.redis_client().execute_command("ACL", "LOG", "RESET")
        fed.start_all()
        yield fed


def test_whole_signed_otp_job_over_mutual_tls_with_acl_users(tls_fed):
    from xfed.broker.acl import denied_log

    conf = json.loads((tls_fed.party_config("node-1") / "fed_conf.json").read_text())
    assert conf["redis_server"].startswith(f"rediss://{NS}-node-1:") and conf["identities"]
    res = tls_fed.client("-c", "start")
    assert res.returncode == 0, res.stderr + tls_fed.logs()
    job = tls_fed.wait_job(res.stdout.split()[0])
    assert job.state.value == "SUCCESSFUL", (job, tls_fed.logs())
    admin = tls_fed.redis_client()
    daemons = {f"{NS}-{n}" for n in [*tls_fed.nodes, "scheduler"]}
    seen = tls_fed.wait_for(lambda: (u := connected_users(admin)) >= daemons and u, "each party connected")
    assert seen <= daemons | {f"{NS}-client", "admin"}, seen
    assert denied_log(admin) == []


def test_plain_connection_to_the_tls_port_is_refused(tls_fed):
    from xfed.broker.connection import connect
    from xfed.errors import BrokerError

    with pytest.raises(BrokerError) as err:
        connect(f"127.0.0.1:{tls_fed.redis.port}", retry_s=1.0)
    assert f"127.0.0.1:{tls_fed.redis.port}" in str(err.value) and "\n" not in str(err.value)


def test_wrong_ca_is_one_line_naming_the_address(tls_fed, tmp_path):
    conf = json.loads((tls_fed.party_config("client") / "fed_conf.json").read_text())
    conf["redis"]["tls_ca_file"] = str(tls_fed.root / "other" / "ca.crt")
    (tmp_path / "fed_conf.json").write_text(json.dumps(conf))
    res = tls_fed.client("-c", "status", config=tmp_path, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: TLS handshake with Redis at rediss://{NS}-client@127.0.0.1:"), lines[0]
    assert f":{tls_fed.redis.port}/0 failed" in lines[0]
    assert json.loads((tls_fed.root / "pw.json").read_text())[f"{NS}-client"] not in res.stderr
