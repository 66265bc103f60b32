"""Signed DH public values: what verifies, and every field whose change must break verification."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xfed.errors import ConfigError, SecurityError
from xfed.security.identity import (
    generate,
    load_private_key,
    sign_dh_public,
    verify_dh_public,
    write_private_key,
)

REPO = Path(__file__).resolve().parents[2]
FIELDS = dict(session="7/0/1", receiver="node-2", group_bits=3072, value=2**3000 + 12345)


def _sig(key, **over):
    kw = {**FIELDS, **over}
    return sign_dh_public(key, **kw)


def test_signature_verifies_for_the_exact_transcript():
    key = generate("node-1")
    verify_dh_public(key.public_hex, _sig(key), sender="node-1", **FIELDS)


@pytest.mark.parametrize(
    "field,value",
    [("session", "7/0/2"), ("session", "8/0/1"), ("receiver", "node-3"), ("group_bits", 2048), ("value", 2**3000 + 12346)],
)
def test_changed_field_is_rejected_naming_the_pair(field, value):
    key = generate("node-1")
    sig = _sig(key)
    kw = {**FIELDS, field: value}
    with pytest.raises(SecurityError, match="node-1 -> "):
        verify_dh_public(key.public_hex, sig, sender="node-1", **kw)


def test_signature_by_another_key_is_rejected():
    honest, mallory = generate("node-1"), generate("node-1")
    with pytest.raises(SecurityError, match="pinned identity of node-1"):
        verify_dh_public(honest.public_hex, _sig(mallory), sender="node-1", **FIELDS)


def test_sender_is_bound():
    key = generate("node-1")
    with pytest.raises(SecurityError):
        verify_dh_public(key.public_hex, _sig(key), sender="node-3", **FIELDS)


def test_garbage_signature_and_key_are_typed_errors():
    key = generate("node-1")
    with pytest.raises(SecurityError, match="not hex"):
        verify_dh_public(key.public_hex, "zz", sender="node-1", **FIELDS)
    with pytest.raises(SecurityError, match="identities.node-1"):
        verify_dh_public("abcd", _sig(key), sender="node-1", **FIELDS)


def test_key_file_round_trip_is_private_and_never_overwritten(tmp_path):
    key = generate("node-1")
    path = write_private_key(key, tmp_path / "k.pem")
    assert os.stat(path).st_mode & 0o077 == 0
    assert load_private_key(path, "node-1").public_hex == key.public_hex
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        write_private_key(generate("node-1"), path)
    (tmp_path / "bad.pem").write_text("nope")
    with pytest.raises(ConfigError, match="not a PEM"):
        load_private_key(tmp_path / "bad.pem", "node-1")


def test_keygen_cli_prints_pin_line(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "xfed.py"), "keygen", "node-2", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    pin = json.loads(out.stdout.strip().splitlines()[-1])
    key = load_private_key(tmp_path / "keys" / "node-2.ed25519.pem", "node-2")
    assert pin == {"node-2": key.public_hex}


@pytest.mark.skipif(not shutil.which("git"), reason="git needed")
def test_keygen_without_out_writes_where_git_ignores_it(tmp_path):
    """Default folder: the config folder's keys/ (where the daemons look), which git must never pick up."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    env = {k: v for k, v in os.environ.items() if k != "XFED_CONFIG_PATH"}
    out = subprocess.run([sys.executable, str(REPO / "xfed.py"), "keygen", "node-1"], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "config" / "keys" / "node-1.ed25519.pem").is_file()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=tmp_path,
                            capture_output=True, text=True, check=True).stdout
    assert status == "", status
    ignored = subprocess.run(["git", "check-ignore", "-q", "config/keys/node-1.ed25519.pem"], cwd=REPO)
    assert ignored.returncode == 0  # and this repository's .gitignore covers its default config folder too
