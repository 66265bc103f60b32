"""A private CA and certificates for `redis-server --tls-port` and xfed's rediss:// clients (no openssl CLI).

For a federation that runs its own Redis: one CA, one server certificate (SANs = the names and IPs
the parties dial), optionally one client certificate per party for mutual TLS
(`--tls-auth-clients yes`). Keys are ECDSA P-256, written owner-readable only.

    python -m xfed.security.tls OUT_DIR --host redis.example.org --host 10.0.0.5 [--client node-1 ...]

Then: redis-server --port 0 --tls-port 6380 --tls-cert-file OUT/server.crt --tls-key-file OUT/server.key
--tls-ca-cert-file OUT/ca.crt; each party: "redis_server": "rediss://redis.example.org:6380",
"redis": {"tls_ca_file": "ca.crt"} (+ tls_cert_file / tls_key_file with mutual TLS).
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from xfed.commands import HELP, run
from xfed.errors import ConfigError

_STEM_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")  # a file name, never a path


@dataclass(frozen=True)
class CertFiles:
    """Paths of one certificate and its private key (and of the CA that signed it)."""

    cert: Path
    key: Path
    ca: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


def _issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, issuer_key, *, ca: bool,
           hosts: list[str], usage: list, days: int) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
    else:
        b = b.add_extension(x509.KeyUsage(True, False, True, False, True, False, False, False, False), critical=True)
        b = b.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        if hosts:
            b = b.add_extension(_san(hosts), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def make_ca(folder: str | os.PathLike, *, name: str = "xfed federation CA", days: int = 365) -> CertFiles:
    """Write ca.crt + ca.key in `folder` (refuses to overwrite an existing CA key)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "ca.key").exists():
        raise ConfigError(f"{out / 'ca.key'}: already exists; refusing to overwrite a CA key")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue(name, key, _name(name), key, ca=True, hosts=[], usage=[], days=days)
    (out / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, out / "ca.key")
    return CertFiles(out / "ca.crt", out / "ca.key", out / "ca.crt")


def issue(folder: str | os.PathLike, stem: str, *, hosts: list[str] | None = None, client: bool = False,
          days: int = 365) -> CertFiles:
    """Write <stem>.crt + <stem>.key signed by the CA in `folder`: a server certificate for `hosts`
    (DNS names or IPs), or with client=True a client certificate (CN = stem) for mutual TLS."""
    out = Path(folder)
    if not _STEM_RE.match(stem):
        raise ConfigError(f"certificate name {stem!r}: use 1-64 characters from A-Z a-z 0-9 _ . -")
    try:
        ca_key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{out}: no usable ca.crt/ca.key ({exc}); run make_ca first") from None
    if not client and not hosts:
        raise ConfigError("a server certificate needs at least one host name or IP")
    key = ec.generate_private_key(ec.SECP256R1())
    usage = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH]
    cert = _issue(stem, key, ca_cert.subject, ca_key, ca=False, hosts=list(hosts or []), usage=usage, days=days)
    (out / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, out / f"{stem}.key")
    return CertFiles(out / f"{stem}.crt", out / f"{stem}.key", out / "ca.crt")


@click.command(context_settings=HELP, help=__doc__.splitlines()[0])
@click.argument("out")
@click.option("--host", "hosts", multiple=True, help="Name or IP the parties dial (repeatable; default localhost, "
                                                     "127.0.0.1).")
@click.option("--client", "clients", multiple=True, help="Party needing a client certificate (repeatable).")
@click.option("--days", type=int, default=365, show_default=True, help="Validity of every certificate.")
def command(out: str, hosts: tuple[str, ...], clients: tuple[str, ...], days: int) -> int:
    """OUT: folder for ca.crt/ca.key, server.crt/server.key, <client>.crt/.key."""
    try:
        make_ca(out, days=days)
        issue(out, "server", hosts=list(hosts) or ["localhost", "127.0.0.1"], days=days)
        for c in clients:
            issue(out, c, client=True, days=days)
    except ConfigError as err:
        click.echo(f"error: {err}")
        return 2
    click.echo(f"wrote ca.crt, server.crt/.key{''.join(f', {c}.crt/.key' for c in clients)} in {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(command, argv, "python -m xfed.security.tls")


if __name__ == "__main__":
    raise SystemExit(main())
