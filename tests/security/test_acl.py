"""ACL users derived from fed_conf: the rules themselves, the script's output, and a permission matrix
checked by a real Redis 7 (`ACL DRYRUN`, nothing executed)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from xfed.broker.acl import acl_file, apply_users, federation_users, user_name
from xfed.broker.keys import Keys
from xfed.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
NODES = ["node-1", "node-2", "node-3", "assist_trainer"]


def by_subject(users):
    return {u.subject: u for u in users}


def test_one_user_per_node_plus_scheduler_and_client_with_the_keys_module_selectors():
    users = federation_users("fl", NODES)
    assert [u.name for u in users] == [f"fl-{n}" for n in NODES] + ["fl-scheduler", "fl-client"]
    u = by_subject(users)["node-2"]
    assert list(u.keys) == Keys("fl").node_acl_selectors("node-2")
    rules = u.rules()
    assert rules[:2] == ["on", f"#{u.password_hash}"] and "resetkeys" in rules and "resetchannels" in rules
    assert rules.index("-@all") < rules.index("+xread")  # deny everything first, then allow
    assert "+keys" not in rules and "+flushall" not in rules and "+scan" not in rules
    assert "+scan" in by_subject(users)["scheduler"].rules()  # it finds a finished job's mailboxes


def test_passwords_are_generated_strong_and_distinct_or_taken_as_given():
    users = federation_users("fl", NODES)
    pws = [u.password for u in users]
    assert len(set(pws)) == len(pws) and all(len(p) >= 32 for p in pws)
    given = {user_name("fl", "node-1"): "x" * 20}
    assert by_subject(federation_users("fl", NODES, given))["node-1"].password == "x" * 20
    with pytest.raises(ConfigError, match="fl-node-1.*16 characters"):
        federation_users("fl", NODES, {"fl-node-1": "short"})


def test_acl_file_and_repr_never_hold_a_cleartext_password():
    users = federation_users("fl", NODES)
    text = acl_file(users)
    assert text.count("\n") == len(users) and all(line.startswith("user fl-") for line in text.splitlines())
    for u in users:
        assert u.password not in text and u.password not in repr(u) and f"#{u.password_hash}" in text


@pytest.mark.parametrize("node", ["scheduler", "client"])
def test_a_node_named_like_a_service_user_is_refused(node):
    with pytest.raises(ConfigError, match=f"node id '{node}'"):
        federation_users("fl", ["node-1", node])


def test_invalid_node_id_is_refused_before_it_reaches_a_glob():
    with pytest.raises(ConfigError, match="invalid node id"):
        federation_users("fl", ["node-1", "node*"])


def test_url_quotes_credentials_and_brackets_ipv6():
    u = by_subject(federation_users("fl", NODES, {"fl-node-1": "p@ss:w/rd%with-16+chars"}))["node-1"]
    assert u.url("::1", 6380, tls=True) == "rediss://fl-node-1:p%40ss%3Aw%2Frd%25with-16%2Bchars@[::1]:6380/0"
    from xfed.config import RedisAddress

    addr = RedisAddress.parse(u.url("10.0.0.5", 6379, db=2))
    assert (addr.username, addr.password, addr.host, addr.port, addr.db) == ("fl-node-1", u.password, "10.0.0.5",
                                                                              6379, 2)


# --- scripts/redis_acl.py ---------------------------------------------------------------------------

def write_fed_conf(folder: Path, redis_server: str = "10.1.2.3:6390") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    conf = {"fed_info": {"scheduler": {"scheduler": "localhost:0"},
                         "trainer": {"node-1": "localhost:0", "node-2": "localhost:0"},
                         "assist_trainer": {"assist_trainer": "localhost:0"}},
            "redis_server": redis_server, "redis": {"namespace": "fl", "username": "admin", "password": "adminpw"}}
    (folder / "fed_conf.json").write_text(json.dumps(conf))
    return folder


def script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "redis_acl.py"), *args], capture_output=True,
                          text=True, timeout=60)


def test_script_prints_acl_file_and_per_party_urls_and_writes_private_configs(tmp_path):
    cfg = write_fed_conf(tmp_path / "cfg")
    res = script("--config_path", str(cfg), "--passwords", str(tmp_path / "pw.json"), "--tls",
                 "--configs", str(tmp_path / "parties"))
    assert res.returncode == 0, res.stderr
    pw = json.loads((tmp_path / "pw.json").read_text())
    lines = res.stdout.splitlines()
    assert sum(line.startswith("user fl-") for line in lines) == 5
    url = f"rediss://fl-node-2:{pw['fl-node-2']}@10.1.2.3:6390/0"
    assert f"#   node-2: {url}" in lines
    conf = json.loads((tmp_path / "parties" / "node-2" / "fed_conf.json").read_text())
    assert conf["redis_server"] == url and "username" not in conf["redis"] and "password" not in conf["redis"]
    assert conf["redis"]["namespace"] == "fl" and conf["fed_info"]["trainer"] == {"node-1": "localhost:0",
                                                                                    "node-2": "localhost:0"}
    assert (tmp_path / "parties" / "node-2" / "fed_conf.json").stat().st_mode & 0o077 == 0


def test_script_commands_format_replaces_old_rules(tmp_path):
    res = script("--config_path", str(write_fed_conf(tmp_path)), "--format", "commands", "--server",
                 "redis.example.org:7000")
    assert res.returncode == 0, res.stderr
    cmds = res.stdout.splitlines()
    assert len(cmds) == 5 and all(c.startswith("ACL SETUSER fl-") and " reset on #" in c for c in cmds)
    assert "redis://fl-client:" in res.stderr and "@redis.example.org:7000/0" in res.stderr


@pytest.mark.parametrize("setup, args, message", [
    (lambda d: write_fed_conf(d, "embedded"), [], 'redis_server is "embedded": pass --server'),
    (lambda d: (write_fed_conf(d), (d / "pw.json").write_text("[1]")), ["--passwords", "{d}/pw.json"],
     "pw.json: expected a JSON object"),
    (write_fed_conf, ["--apply"], "--apply needs an admin connection"),
    (lambda d: d.mkdir(exist_ok=True), [], "fed_conf.json"),
])
def test_script_errors_are_one_line(tmp_path, setup, args, message, monkeypatch):
    monkeypatch.delenv("XFED_REDIS_ADMIN_URL", raising=False)
    setup(tmp_path)
    res = script("--config_path", str(tmp_path), *[a.format(d=tmp_path) for a in args])
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and message in res.stderr, res.stderr


# --- permissions, checked by Redis itself ------------------------------------------------------------

K = Keys("fl")
BOX_1_FROM_2 = K.mailbox("7", 0, "node-1", "node-2")
BOX_2_FROM_1 = K.mailbox("7", 0, "node-2", "node-1")
BOX_2_FROM_3 = K.mailbox("7", 0, "node-2", "node-3")
BOX_A_FROM_2 = K.mailbox("7", 0, "assist_trainer", "node-2")
ALLOWED, DENIED = True, False
MATRIX = [
    # node-1: own mailboxes in full, others' write-only as itself, control plane as documented
    ("node-1", ["XREAD", "STREAMS", BOX_1_FROM_2, "0"], ALLOWED),
    ("node-1", ["XDEL", BOX_1_FROM_2, "1-1"], ALLOWED),
    ("node-1", ["XADD", BOX_2_FROM_1, "*", "d", "x"], ALLOWED),
    ("node-1", ["EXPIRE", BOX_2_FROM_1, "60"], ALLOWED),
    ("node-1", ["XREAD", "STREAMS", BOX_2_FROM_1, "0"], DENIED),
    ("node-1", ["XREAD", "STREAMS", BOX_2_FROM_3, "0"], DENIED),
    ("node-1", ["XADD", BOX_2_FROM_3, "*", "d", "x"], DENIED),
    ("node-1", ["XADD", BOX_A_FROM_2, "*", "d", "x"], DENIED),
    ("node-1", ["XDEL", BOX_2_FROM_3, "1-1"], DENIED),
    ("node-1", ["DEL", BOX_2_FROM_3], DENIED),
    ("node-1", ["HGETALL", K.job("7")], ALLOWED),
    ("node-1", ["HSET", K.job("7"), "state", "SUCCESSFUL"], DENIED),
    ("node-1", ["XADD", K.job_events("7"), "*", "m", "{}"], ALLOWED),
    ("node-1", ["XREAD", "STREAMS", K.job_events("7"), "0"], DENIED),
    ("node-1", ["XREADGROUP", "GROUP", "daemon", "c", "STREAMS", K.node_cmd("node-1"), ">"], ALLOWED),
    ("node-1", ["XADD", K.node_cmd("node-2"), "*", "m", "{}"], DENIED),
    ("node-1", ["SET", K.heartbeat("node-1"), "1", "PX", "100"], ALLOWED),
    ("node-1", ["SET", K.heartbeat("node-2"), "1", "PX", "100"], DENIED),
    ("node-1", ["XADD", K.requests(), "*", "m", "{}"], DENIED),
    ("node-1", ["KEYS", "*"], DENIED),
    ("node-1", ["SCAN", "0"], DENIED),
    ("node-1", ["FLUSHALL"], DENIED),
    ("node-1", ["CONFIG", "GET", "*"], DENIED),
    ("node-1", ["ACL", "SETUSER", "x"], DENIED),
    ("node-1", ["CLIENT", "KILL", "ID", "1"], DENIED),
    ("node-1", ["EVAL", "return 1", "0"], DENIED),
    ("node-1", ["XREAD", "STREAMS", "other:job:{7}:s:0.0:to:node-1:from:node-2", "0"], DENIED),  # namespace
    # the scheduler: control plane, mailboxes only deleted
    ("scheduler", ["XREAD", "STREAMS", BOX_2_FROM_1, "0"], DENIED),
    ("scheduler", ["DEL", BOX_2_FROM_1], ALLOWED),
    ("scheduler", ["XADD", BOX_2_FROM_1, "*", "d", "x"], ALLOWED),  # write permission covers XADD (see docs)
    ("scheduler", ["XADD", K.node_cmd("node-2"), "*", "m", "{}"], ALLOWED),
    ("scheduler", ["XREAD", "STREAMS", K.job_events("7"), "0"], ALLOWED),
    ("scheduler", ["EVALSHA", "0" * 40, "1", K.job("7")], ALLOWED),
    ("scheduler", ["SCAN", "0", "MATCH", K.mailbox_pattern("7")], ALLOWED),
    ("scheduler", ["FLUSHALL"], DENIED),
    # the client: requests in, answers and state out
    ("client", ["XADD", K.requests(), "*", "m", "{}"], ALLOWED),
    ("client", ["XREAD", "STREAMS", K.requests(), "0"], DENIED),
    ("client", ["BLPOP", K.reply("abc"), "1"], ALLOWED),
    ("client", ["HGETALL", K.job("7")], ALLOWED),
    ("client", ["XREAD", "STREAMS", K.job_events("7"), "0"], ALLOWED),
    ("client", ["HSET", K.job("7"), "state", "FAILED"], DENIED),
    ("client", ["XADD", K.node_cmd("node-1"), "*", "m", "{}"], DENIED),
    ("client", ["XREAD", "STREAMS", BOX_2_FROM_1, "0"], DENIED),
    ("client", ["XADD", BOX_2_FROM_1, "*", "d", "x"], DENIED),
]


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory):
    import importlib.util

    spec = importlib.util.spec_from_file_location("xfed_tests_root_conftest_acl", REPO / "tests" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    srv = mod.RedisServer(dir=tmp_path_factory.mktemp("acl-redis"))
    srv.start()
    r = srv.client()
    apply_users(r, federation_users("fl", NODES))
    yield r
    r.close()
    srv.stop()


@pytest.mark.integration
def test_permission_matrix_as_redis_decides_it(acl_server):
    wrong = []
    for subject, cmd, allowed in MATRIX:
        got = acl_server.execute_command("ACL", "DRYRUN", f"fl-{subject}", *cmd)
        ok = got in (b"OK", "OK")
        if ok != allowed:
            wrong.append(f"{subject}: {' '.join(cmd)} -> {got!r} (expected {'allowed' if allowed else 'denied'})")
    assert wrong == []


@pytest.mark.integration
def test_reapplying_replaces_rules_and_old_passwords_stop_working(acl_server):
    import redis

    first = by_subject(federation_users("fl", ["node-9"]))["node-9"]
    apply_users(acl_server, [first])
    second = by_subject(federation_users("fl", ["node-9"]))["node-9"]
    apply_users(acl_server, [second])
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    kw = dict(host=acl_server.connection_pool.connection_kwargs["host"],
              port=acl_server.connection_pool.connection_kwargs["port"], socket_timeout=5,
              retry=Retry(NoBackoff(), 0))  # a refused password is final; no client-side retries
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(username=first.name, password=first.password, **kw).ping()
    assert redis.Redis(username=second.name, password=second.password, **kw).ping() is True


@pytest.mark.integration
def test_verify_reports_broken_promises_and_the_open_default_user(acl_server):
    from xfed.broker.acl import default_user_open, verify_users

    users = federation_users("vf", ["a1", "a2"])
    apply_users(acl_server, users)
    assert verify_users(acl_server, users, "vf") == []
    acl_server.execute_command("ACL", "SETUSER", "vf-a1", "~*")   # someone loosened a1 by hand
    assert verify_users(acl_server, users, "vf") == ["vf-a1 can read a2's mailbox", "vf-a1 can write as a2"]
    assert default_user_open(acl_server) is True   # the test server's default user: on, nopass


@pytest.mark.integration
def test_printed_acl_file_loads_into_redis_server(redis_factory, tmp_path):
    users = federation_users("fl", ["node-1", "node-2"])
    path = tmp_path / "users.acl"
    path.write_text("user default on nopass ~* &* +@all\n" + acl_file(users))
    srv = redis_factory(extra_args=["--aclfile", str(path)])
    r = srv.client()
    try:
        names = {line.split()[1].decode() for line in r.execute_command("ACL", "LIST")}
        assert names == {"default", "fl-node-1", "fl-node-2", "fl-scheduler", "fl-client"}
        from xfed.broker.acl import verify_users

        assert verify_users(r, users, "fl") == []
        import redis

        node1 = by_subject(users)["node-1"]
        assert redis.Redis(host=srv.host, port=srv.port, username=node1.name, password=node1.password).ping()
    finally:
        r.close()


def test_script_json_format_with_password_env_has_no_credentials_in_urls(tmp_path):
    res = script("--config_path", str(write_fed_conf(tmp_path)), "--format", "json", "--password-env", "FL_PW")
    assert res.returncode == 0, res.stderr
    users = json.loads(res.stdout)["users"]
    assert [u["subject"] for u in users] == ["node-1", "node-2", "assist_trainer", "scheduler", "client"]
    assert {u["url"] for u in users} == {"redis://10.1.2.3:6390/0"}
    assert all(u["rules"][0] == "on" and u["rules"][1].startswith("#") for u in users)
    bad = script("--config_path", str(tmp_path), "--password-env", "not a name")
    assert bad.returncode == 2 and "is not an environment variable name" in bad.stderr
