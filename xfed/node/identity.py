"""The node's own signing key, read when fed_conf.json pins identities."""
from __future__ import annotations

import os

from xfed.config.fed_conf import FedConf
from xfed.errors import ConfigError
from xfed.security.identity import IdentityKey, default_key_path, load_private_key


def load_identity_key(fed: FedConf, config_path: str | os.PathLike, node: str) -> IdentityKey | None:
    """The node's signing key when fed_conf.json pins identities: $XFED_IDENTITY_KEY or <config>/keys/."""
    if node not in fed.identities:
        return None
    path = os.environ.get("XFED_IDENTITY_KEY") or default_key_path(config_path, node)
    key = load_private_key(path, node)
    if key.public_hex.lower() != str(fed.identities[node]).lower():
        raise ConfigError(f"{path}: this key's public half does not match fed_conf.json identities[{node!r}]")
    return key
