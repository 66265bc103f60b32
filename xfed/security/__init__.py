"""Node identities: Ed25519 keys pinned in fed_conf.json that authenticate the Diffie-Hellman exchange
and every data-plane message (`xfed.security.messages`, handed to the broker's Comm as `auth`).

TLS material for Redis: `xfed.security.tls`; Redis ACL users: `xfed.broker.acl`; threat model: docs/SECURITY.md.
"""
from xfed.security.identity import (
    IdentityKey,
    dh_transcript,
    load_private_key,
    public_key_hex,
    sign_dh_public,
    verify_dh_public,
)

__all__ = [
    "IdentityKey",
    "dh_transcript",
    "load_private_key",
    "public_key_hex",
    "sign_dh_public",
    "verify_dh_public",
]
