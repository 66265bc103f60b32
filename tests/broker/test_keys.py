"""Key schema: one namespace prefix, hash tags per job/node, ids that cannot break glob patterns."""

import fnmatch

import pytest

from xfed.broker.keys import Keys
from xfed.errors import ConfigError


def test_every_key_of_a_job_shares_its_hash_tag_and_pattern():
    k = Keys("fed-a")
    job_keys = [k.job(7), k.job_events(7), k.mailbox(7, 0, "node-1", "assist"), k.mailbox("7", 3, "a", "b", 2)]
    assert all("{7}" in key for key in job_keys)
    assert all(fnmatch.fnmatchcase(key, k.job_pattern(7)) for key in job_keys)
    assert not fnmatch.fnmatchcase(k.job(70), k.job_pattern(7))
    assert k.mailbox(7, 1, "r", "s", 2) == "fed-a:job:{7}:s:1.2:to:r:from:s"


def test_namespaces_separate_federations():
    assert Keys("a").requests() != Keys("b").requests()
    assert Keys("org:fed").node_cmd("n1").startswith("org:fed:node:{n1}")


@pytest.mark.parametrize("bad", ["", "a:b", "a*", "a b", "{x}", "x" * 65, "ü"])
def test_ids_that_could_break_patterns_are_refused(bad):
    with pytest.raises(ConfigError, match="invalid node id"):
        Keys().heartbeat(bad)


def test_bad_namespace_and_negative_stage_are_refused():
    with pytest.raises(ConfigError, match="namespace"):
        Keys("a{b}")
    with pytest.raises(ConfigError, match="stage"):
        Keys().mailbox(1, -1, "a", "b")


def test_acl_selectors_cover_own_mailboxes_only():
    k = Keys("ns")
    sel = k.node_acl_selectors("node-1")
    read_own = [s[1:] for s in sel if s.startswith("~")]
    write_any = [s[3:] for s in sel if s.startswith("%W~")] + read_own

    def can_read(key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, p) for p in read_own) or any(
            fnmatch.fnmatchcase(key, s[3:]) for s in sel if s.startswith("%R~"))

    def can_write(key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, p) for p in write_any)

    assert can_read(k.mailbox(1, 0, "node-1", "node-2"))
    assert not can_read(k.mailbox(1, 0, "node-2", "node-1"))
    assert not can_read(k.mailbox(1, 0, "node-2", "node-3"))
    assert can_write(k.mailbox(1, 0, "node-2", "node-1"))
    assert not can_write(k.mailbox(1, 0, "node-2", "node-3"))
    assert not can_write(k.mailbox(1, 0, "node-2", "node-10"))
    assert can_read(k.job(1)) and can_write(k.job_events(1)) and not can_write(k.job(1))
    assert can_write(k.heartbeat("node-1")) and not can_write(k.heartbeat("node-2"))
    # a restarted node's mailboxes (another incarnation) fall under the same rules
    assert k.mailbox(1, 0, "node-1", "node-2", 0, (1, 0)) == "ns:job:{1}:s:0.0.i1-0:to:node-1:from:node-2"
    assert can_read(k.mailbox(1, 0, "node-1", "node-2", 0, (1, 0)))
    assert not can_read(k.mailbox(1, 0, "node-2", "node-1", 0, (0, 1)))
    assert can_write(k.mailbox(1, 0, "node-2", "node-1", 0, (0, 1)))
    assert not can_write(k.mailbox(1, 0, "node-2", "node-3", 0, (0, 2)))
