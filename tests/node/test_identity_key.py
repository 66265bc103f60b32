"""The stage runner hands the operator this node's identity key when fed_conf.json pins identities."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from xfed.errors import ConfigError
from xfed.node.stage_runner import _identity_key, parse_args, read_stage_args
from xfed.security.identity import default_key_path, generate, write_private_key


def test_key_is_loaded_and_checked_against_the_pinned_public_key(tmp_path):
    key = generate("node-1")
    write_private_key(key, default_key_path(tmp_path, "node-1"))
    args = SimpleNamespace(node="node-1", config_path=str(tmp_path))
    assert _identity_key(SimpleNamespace(identities={}), args) is None
    got = _identity_key(SimpleNamespace(identities={"node-1": key.public_hex}), args)
    assert got.public_hex == key.public_hex
    other = generate("node-1")
    with pytest.raises(ConfigError, match=r"does not match fed_conf.json identities\['node-1'\]"):
        _identity_key(SimpleNamespace(identities={"node-1": other.public_hex}), args)


def test_spare_child_stage_arguments_are_validated():
    args = parse_args(["--spare"])
    line = '{"config_path": "c", "node": "n", "job": "1", "stage": 0, "attempt": 0, "work_dir": "w"}'
    assert read_stage_args(args, line).stage == 0 and args.node == "n" and args.incarnation == 0
    assert read_stage_args(parse_args(["--spare"]), line[:-1] + ', "incarnation": 2}').incarnation == 2  # a rejoin
    for bad in ('[1]', '{"config_path": "c"}', line.replace('"stage": 0', '"stage": true'), "not json",
                line[:-1] + ', "incarnation": -1}'):
        with pytest.raises(ValueError):
            read_stage_args(parse_args(["--spare"]), bad)


def _fed(identities):
    return SimpleNamespace(identities=identities, node_ids=["node-1", "node-2", "assist_trainer"],
                           assist_trainer_id="assist_trainer")


def test_unpinned_participants_are_named_in_one_warning():
    from xfed.node.stage_runner import unpinned_warning

    keys = {n: generate(n).public_hex for n in ("node-1", "node-2", "assist_trainer")}
    assert unpinned_warning(_fed({})) is None and unpinned_warning(_fed(keys)) is None
    msg = unpinned_warning(_fed({n: keys[n] for n in ("node-1", "node-2")}))
    assert "assist_trainer (the aggregator: the initial adapter and every round's mean)" in msg
    assert "not authenticated" in msg and "node-1" not in msg and "\n" not in msg


def test_stage_comm_signs_only_when_identities_are_pinned():
    from xfed.broker.keys import Keys
    from xfed.node.stage_runner import _make_comm

    args = SimpleNamespace(job="3", stage=0, node="node-1", attempt=0, incarnation=0)
    key = generate("node-1")
    assert _make_comm(None, Keys("t"), args, lambda: False, _fed({}), None).auth is None
    comm = _make_comm(None, Keys("t"), args, lambda: False, _fed({"node-1": key.public_hex}), key)
    assert comm.auth.can_sign and comm.auth.pinned("node-1") and not comm.auth.pinned("node-2")


@pytest.mark.integration
def test_events_are_signed_with_the_nodes_key_and_verify_as_the_scheduler_reads_them(redis_server):
    from xfed.broker.keys import Keys
    from xfed.broker.streams import ControlStream
    from xfed.node.events import EventReporter
    from xfed.security.events import EventVerifier

    r, keys, key = redis_server.client(), Keys("ev"), generate("node-1")
    EventReporter(r, keys, "3", "node-1", 0, identity_key=key).report("log", {"v": 1.5})
    EventReporter(r, keys, "3", "node-1", 0).error("unsigned")
    signed, unsigned = [e.msg for e in ControlStream(r, keys.job_events("3")).read("0-0")]
    check = EventVerifier({"node-1": key.public_hex})
    assert len(signed["sig"]) == 128 and check.problem("ev", signed) is None
    assert "sig" not in unsigned and "unsigned, but identities are pinned" in check.problem("ev", unsigned)


def test_a_pinned_daemon_without_its_key_refuses_to_start(tmp_path):
    import json

    from xfed.node.main import run_node

    conf = {"fed_info": {"scheduler": {"scheduler": "localhost:0"}, "trainer": {"node-1": "localhost:0"},
                         "assist_trainer": {"assist_trainer": "localhost:0"}},
            "redis_server": "127.0.0.1:1", "identities": {"node-1": generate("node-1").public_hex}}
    (tmp_path / "fed_conf.json").write_text(json.dumps(conf))
    with pytest.raises(ConfigError, match="cannot read identity key of node-1"):
        run_node(str(tmp_path), "node-1")
