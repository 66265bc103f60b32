"""`xfed keygen NODE`: make a node's Ed25519 identity key and print the line to pin in fed_conf.json."""
from __future__ import annotations

import json

import click

from xfed.security.identity import default_key_path, generate, write_private_key


def keygen_command(node_id: str, *, out_dir: str) -> None:
    from xfed.config.fed_conf import NODE_ID_RE, NODE_ID_RULE
    from xfed.errors import ConfigError

    if not NODE_ID_RE.match(node_id):  # the id names the key file: `../../x` would escape DIR/keys/
        raise ConfigError(f"keygen: bad node id {node_id!r}: {NODE_ID_RULE}")
    key = generate(node_id)
    path = write_private_key(key, default_key_path(out_dir, node_id))
    # private keys never belong in git, wherever the folder is (a config folder is often checked in)
    ignore = path.parent / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# written by `xfed keygen`: private keys stay out of git\n*\n")
    click.echo(f"private key: {path} (keep it on {node_id}'s machine only)")
    click.echo('pin the public key in every party\'s fed_conf.json under "identities":')
    click.echo(json.dumps({node_id: key.public_hex}))
