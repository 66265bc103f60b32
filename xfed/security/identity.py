"""Ed25519 node identities: keys, and signatures over DH public values (a broker cannot swap them).

The signed transcript binds every field that could otherwise be replayed or redirected: protocol
label, job, stage, attempt, sender, receiver, DH group size and the public value itself. Every
data-plane message is signed as well when identities are pinned: `xfed.security.messages`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from xfed.errors import ConfigError, SecurityError

_LABEL = b"xfed/dh-public/v1"


@dataclass(frozen=True)
class IdentityKey:
    node_id: str
    private: Ed25519PrivateKey

    @property
    def public_hex(self) -> str:
        return public_key_hex(self.private)


def public_key_hex(private: Ed25519PrivateKey) -> str:
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def pinned_keys(identities: Mapping[str, str]) -> dict[str, Ed25519PublicKey]:
    """fed_conf.json `identities` as verification keys; SecurityError naming a malformed one."""
    out = {}
    for node, public_hex in identities.items():
        try:
            out[node] = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
        except ValueError:
            raise SecurityError(f"identities.{node}: not a 32-byte Ed25519 public key in hex") from None
    return out


def transcript(label: bytes, *fields: str | bytes) -> bytes:
    """Canonical bytes a signature covers: label then fields, each u32-length-prefixed (none can bleed
    into another; the label keeps one protocol's signature from being valid in another)."""
    out = []
    for value in (label, *fields):
        data = value.encode() if isinstance(value, str) else value
        out += [len(data).to_bytes(4, "big"), data]
    return b"".join(out)


def dh_transcript(*, session: str, sender: str, receiver: str, group_bits: int, value: int) -> bytes:
    """What a DH public value's signature covers."""
    value_bytes = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return transcript(_LABEL, session, sender, receiver, str(group_bits), value_bytes)


def sign_dh_public(key: IdentityKey, *, session: str, receiver: str, group_bits: int, value: int) -> str:
    """Hex signature by `key.node_id` over its DH public value for `receiver` in `session`."""
    msg = dh_transcript(session=session, sender=key.node_id, receiver=receiver, group_bits=group_bits, value=value)
    return key.private.sign(msg).hex()


def verify_dh_public(public_hex: str, signature_hex: str, *, session: str, sender: str, receiver: str,
                     group_bits: int, value: int) -> None:
    """Raise SecurityError naming the pair unless `signature_hex` is `sender`'s signature on this value."""
    pair = f"{sender} -> {receiver}"
    try:
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
    except ValueError:
        raise SecurityError(f"identities.{sender}: not a 32-byte Ed25519 public key in hex") from None
    try:
        signature = bytes.fromhex(signature_hex)
    except (ValueError, TypeError):
        raise SecurityError(f"DH public value {pair}: signature is not hex") from None
    msg = dh_transcript(session=session, sender=sender, receiver=receiver, group_bits=group_bits, value=value)
    try:
        public.verify(signature, msg)
    except InvalidSignature:
        raise SecurityError(
            f"DH public value {pair}: signature does not verify against the pinned identity of {sender} "
            "(tampered, replayed or from another session)"
        ) from None


def default_key_path(config_path: str | os.PathLike, node_id: str) -> Path:
    return Path(config_path) / "keys" / f"{node_id}.ed25519.pem"


def load_private_key(path: str | os.PathLike, node_id: str) -> IdentityKey:
    """Read a node's PEM private key (as written by `xfed keygen`)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as err:
        raise ConfigError(f"{p}: cannot read identity key of {node_id}: {err.strerror}") from None
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{p}: not a PEM private key") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigError(f"{p}: not an Ed25519 key")
    return IdentityKey(node_id, private)


def generate(node_id: str) -> IdentityKey:
    return IdentityKey(node_id, Ed25519PrivateKey.generate())


def write_private_key(key: IdentityKey, path: str | os.PathLike) -> Path:
    """Write the key as unencrypted PKCS#8 PEM, readable by its owner only; never overwrite."""
    p = Path(path)
    if p.exists():
        raise ConfigError(f"{p}: already exists; refusing to overwrite an identity key")
    p.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return p
