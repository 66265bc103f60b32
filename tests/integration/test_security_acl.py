"""Redis ACLs end to end: users from scripts/redis_acl.py, every party logged in as itself, a real job.

The `default` user is switched off, so nothing can lean on it; the harness watches through its own
admin user. The job must succeed with no ACL denial logged, and node-1's own credentials must be
refused (NOPERM) on node-2's mailbox, on writing as node-2, on the job state and on keyless commands.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.integration.conftest import REPO, PartyFederation, connected_users, serve

pytestmark = pytest.mark.integration

NS = "acl"
ADMIN_PW = "admin-test-password-0123456789"


def run_acl_script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "redis_acl.py"), *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def acl_fed(tmp_path_factory):
    root = tmp_path_factory.mktemp("aclfed")
    with serve(root, PartyFederation, namespace=NS, admin_password=ADMIN_PW) as fed:
        srv = fed.redis
        fed.write_config({"rounds": 3, "dim": 8, "weighting": "index", "encryption": {"otp": {}}})
        res = run_acl_script("--config_path", str(fed.config), "--passwords", str(root / "pw.json"),
                             "--configs", str(root / "parties"), "--apply",
                             env={"XFED_REDIS_ADMIN_URL": f"redis://{srv.address}/0"})
        assert res.returncode == 0, res.stderr
        assert "applied 5 users" in res.stderr and "checked with ACL DRYRUN" in res.stderr, res.stderr
        assert "warning: the server's `default` user is on without a password" in res.stderr
        for party in fed.nodes:
            shutil.copy(fed.config / f"trainer_config_{party}.json", fed.party_config(party))
        admin = srv.client()
        admin.execute_command("ACL", "SETUSER", "admin", "on", f">{ADMIN_PW}", "~*", "&*", "+@all")
        admin.execute_command("ACL", "SETUSER", "default", "off")
        admin.close()
        fed.redis_client().execute_command("ACL", "LOG", "RESET")
        fed.start_all()
        yield fed


def _as(fed: PartyFederation, subject: str):
    import redis

    pw = json.loads((fed.root / "pw.json").read_text())[f"{NS}-{subject}"]
    return redis.Redis(host=fed.redis.host, port=fed.redis.port, username=f"{NS}-{subject}", password=pw,
                       socket_timeout=30)


def _noperm(fn, *args) -> str:
    import redis

    with pytest.raises(redis.exceptions.NoPermissionError) as err:
        fn(*args)
    return str(err.value)


def test_script_writes_private_configs_with_own_urls(acl_fed):
    pw = json.loads((acl_fed.root / "pw.json").read_text())
    assert sorted(pw) == sorted(f"{NS}-{n}" for n in [*acl_fed.nodes, "scheduler", "client"])
    assert (acl_fed.root / "pw.json").stat().st_mode & 0o077 == 0
    conf = json.loads((acl_fed.party_config("node-1") / "fed_conf.json").read_text())
    assert conf["redis_server"] == f"redis://{NS}-node-1:{pw[f'{NS}-node-1']}@{acl_fed.redis.address}/0"
    assert (acl_fed.party_config("node-1") / "fed_conf.json").stat().st_mode & 0o077 == 0
    # a re-run keeps the stored passwords (same URLs, nothing rewritten)
    res = run_acl_script("--config_path", str(acl_fed.config), "--passwords", str(acl_fed.root / "pw.json"))
    assert res.returncode == 0 and json.loads((acl_fed.root / "pw.json").read_text()) == pw
    assert f"node-1: {conf['redis_server']}" in res.stdout
    assert pw[f"{NS}-node-1"] not in res.stdout.split("# redis_server")[0]  # the ACL file holds hashes only


def test_job_succeeds_with_every_party_logged_in_as_itself_and_nothing_denied(acl_fed):
    res = acl_fed.client("-c", "start")
    assert res.returncode == 0, res.stderr + acl_fed.logs()
    job_id = res.stdout.split()[0]
    job = acl_fed.wait_job(job_id)
    assert job.state.value == "SUCCESSFUL", (job, acl_fed.logs())
    admin = acl_fed.redis_client()
    ours = {f"{NS}-{n}" for n in [*acl_fed.nodes, "scheduler", "client"]}
    # every long-running process holds a connection as its own user (polled: one may be reconnecting)
    seen = acl_fed.wait_for(lambda: (u := connected_users(admin)) >= ours - {f"{NS}-client"} and u,
                            "each party connected")
    assert seen <= ours | {"admin"}, seen   # and nobody as `default` (it is off) or anyone else
    status = acl_fed.client("-c", "status", job_id, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "SUCCESSFUL", status.stderr
    for verb, expect in (("list", job_id), ("nodes", "node-2")):
        res = acl_fed.client("-c", verb)
        assert res.returncode == 0 and expect in res.stdout, res.stdout + res.stderr
    from xfed.broker.acl import denied_log

    assert denied_log(admin) == []


def test_client_with_password_from_the_environment_and_none_in_its_config(acl_fed, monkeypatch):
    res = run_acl_script("--config_path", str(acl_fed.config), "--passwords", str(acl_fed.root / "pw.json"),
                         "--password-env", "XFED_TEST_REDIS_PW", "--configs", str(acl_fed.root / "env-parties"))
    assert res.returncode == 0, res.stderr
    pw = json.loads((acl_fed.root / "pw.json").read_text())[f"{NS}-client"]
    folder = acl_fed.root / "env-parties" / "client"
    text = (folder / "fed_conf.json").read_text()
    assert pw not in text
    conf = json.loads(text)
    assert conf["redis_server"] == f"redis://{acl_fed.redis.address}/0"
    assert (conf["redis"]["username"], conf["redis"]["password_env"]) == (f"{NS}-client", "XFED_TEST_REDIS_PW")
    cmd = [sys.executable, str(REPO / "xfed.py"), "-c", "list", "--config_path", str(folder)]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**acl_fed.env(), "XFED_TEST_REDIS_PW": pw})
    assert ok.returncode == 0, ok.stderr
    # the same config with a wrong password in the variable: refused at once, one line, no password shown
    from xfed.broker.connection import connect
    from xfed.config import load_fed_conf
    from xfed.errors import BrokerError

    monkeypatch.setenv("XFED_TEST_REDIS_PW", "wrong-password-0123456789")
    with pytest.raises(BrokerError) as err:
        connect(load_fed_conf(folder), retry_s=1.0)
    msg = str(err.value)
    assert msg.startswith(f"Redis at redis://{NS}-client@") and "refused the credentials" in msg and "\n" not in msg
    assert "wrong-password" not in msg


def test_node_1_cannot_read_node_2_mailbox_nor_write_as_node_2(acl_fed):
    from xfed.broker.keys import Keys

    k = Keys(NS)
    acl_fed.redis_client().execute_command("ACL", "LOG", "RESET")
    r1 = _as(acl_fed, "node-1")
    try:
        to_node2 = k.mailbox("99", 0, "node-2", "assist_trainer")
        assert "no permissions" in _noperm(r1.xread, {to_node2: "0-0"})
        assert "no permissions" in _noperm(r1.xrange, k.mailbox("99", 0, "node-2", "node-1"))  # even what it sent
        assert "no permissions" in _noperm(r1.xadd, k.mailbox("99", 0, "assist_trainer", "node-2"), {"d": b"forged"})
        assert "no permissions" in _noperm(r1.xadd, to_node2, {"d": b"forged"})  # as the assist trainer
        assert "no permissions" in _noperm(r1.hset, k.job("99"), "state", "SUCCESSFUL")
        assert "no permissions" in _noperm(r1.keys, "*")
        assert "no permissions" in _noperm(r1.flushall)
        assert "no permissions" in _noperm(r1.get, k.heartbeat("node-2"))
        # what it may do: write as itself, read (and XDEL from) its own mailboxes; anything it put there
        # itself "from node-2" fools only itself
        r1.xadd(k.mailbox("99", 0, "node-2", "node-1"), {"d": b"ok"})
        assert r1.xread({k.mailbox("99", 0, "node-1", "node-2"): "0-0"}) in ([], {})
    finally:
        r1.close()
    log = _denials(acl_fed)
    assert {e["username"] for e in log} == {f"{NS}-node-1"}


def test_scheduler_and_client_cannot_read_mailboxes(acl_fed):
    from xfed.broker.keys import Keys

    box = Keys(NS).mailbox("99", 0, "node-2", "node-1")
    for subject in ("scheduler", "client"):
        r = _as(acl_fed, subject)
        try:
            assert "no permissions" in _noperm(r.xread, {box: "0-0"})
        finally:
            r.close()


def _denials(fed):
    from xfed.broker.acl import denied_log

    return denied_log(fed.redis_client())
