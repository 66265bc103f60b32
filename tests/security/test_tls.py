"""The private CA helper: certificates that redis-server and redis-py accept, and what they refuse."""
from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from xfed.errors import BrokerError, ConfigError
from xfed.security.tls import issue, main, make_ca


def _load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_server_certificate_is_signed_by_the_ca_for_the_given_names(tmp_path):
    ca = make_ca(tmp_path)
    srv = issue(tmp_path, "server", hosts=["127.0.0.1", "redis.example.org"])
    cert, ca_cert = _load(srv.cert), _load(ca.cert)
    cert.verify_directly_issued_by(ca_cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["redis.example.org"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    for key in (tmp_path / "ca.key", srv.key):
        assert key.stat().st_mode & 0o077 == 0


def test_client_certificate_for_mutual_tls(tmp_path):
    make_ca(tmp_path)
    cert = _load(issue(tmp_path, "node-1", client=True).cert)
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.subject.rfc4514_string() == "CN=node-1"


@pytest.mark.parametrize("call, message", [
    (lambda d: (make_ca(d), make_ca(d)), "refusing to overwrite a CA key"),
    (lambda d: issue(d, "server", hosts=["x"]), "no usable ca.crt/ca.key"),
    (lambda d: (make_ca(d), issue(d, "server")), "needs at least one host"),
    (lambda d: (make_ca(d), issue(d, "../evil", client=True)), "certificate name '../evil'"),
])
def test_refusals_are_config_errors(tmp_path, call, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        call(tmp_path)


def test_command_line_writes_everything(tmp_path, capsys):
    assert main([str(tmp_path / "pki"), "--host", "localhost", "--client", "node-1"]) == 0
    assert {p.name for p in (tmp_path / "pki").iterdir()} == {"ca.crt", "ca.key", "server.crt", "server.key",
                                                              "node-1.crt", "node-1.key"}
    assert main([str(tmp_path / "pki")]) == 2 and "error: " in capsys.readouterr().out


@pytest.mark.integration
def test_a_certificate_for_another_name_is_refused_in_one_line(redis_factory, tmp_path):
    from xfed.broker.connection import connect
    from xfed.config import RedisAddress

    make_ca(tmp_path)
    srv_files = issue(tmp_path, "server", hosts=["redis.example.org"])   # not 127.0.0.1
    srv = redis_factory(tls={"cert": srv_files.cert, "key": srv_files.key, "ca": srv_files.ca})
    addr = RedisAddress.parse(f"rediss://127.0.0.1:{srv.port}/0", ca_file=str(srv_files.ca))
    with pytest.raises(BrokerError) as err:
        connect(addr, retry_s=2.0)
    msg = str(err.value)
    assert msg.startswith(f"TLS handshake with Redis at rediss://127.0.0.1:{srv.port}/0 failed") and "\n" not in msg
    assert "mismatch" in msg or "not valid for" in msg
