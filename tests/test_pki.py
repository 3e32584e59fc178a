"""`fluidity certs`: the CA and certificates, file modes, and no silent overwrite."""

from __future__ import annotations

import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from support import FLUIDITY, run

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)


def _cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_makes_ca_server_and_client(tmp_path):
    done = run([FLUIDITY, "certs", "init", "--dir", str(tmp_path / "c")])
    assert done.returncode == 0, done.stderr
    d = tmp_path / "c"
    for name in ("ca", "server", "client"):
        assert stat.S_IMODE((d / f"{name}.key").stat().st_mode) == 0o600
    server = _cert(d / "server.pem")
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) >= {"fluidity-server", "localhost"}
    assert "127.0.0.1" in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert ExtendedKeyUsageOID.SERVER_AUTH in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    client = _cert(d / "client.pem")
    assert ExtendedKeyUsageOID.CLIENT_AUTH in client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    ca = _cert(d / "ca.pem")
    assert server.issuer == ca.subject and client.issuer == ca.subject
    server.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)


def test_init_never_overwrites_without_force(tmp_path):
    d = tmp_path / "c"
    assert run([FLUIDITY, "certs", "init", "--dir", str(d)]).returncode == 0
    before = (d / "ca.pem").read_bytes()
    again = run([FLUIDITY, "certs", "init", "--dir", str(d)])
    assert again.returncode != 0
    assert b"--force" in again.stderr
    assert (d / "ca.pem").read_bytes() == before
    forced = run([FLUIDITY, "certs", "init", "--dir", str(d), "--force"])
    assert forced.returncode == 0
    assert (d / "ca.pem").read_bytes() != before


def test_client_issues_another_certificate(tmp_path):
    d = tmp_path / "c"
    assert run([FLUIDITY, "certs", "client", "bob", "--dir", str(d)]).returncode != 0  # no CA yet
    assert run([FLUIDITY, "certs", "init", "--dir", str(d)]).returncode == 0
    done = run([FLUIDITY, "certs", "client", "bob", "--dir", str(d)])
    assert done.returncode == 0, done.stderr
    bob = _cert(d / "bob.pem")
    assert bob.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "bob"
    bob.verify_directly_issued_by(_cert(d / "ca.pem"))
    assert stat.S_IMODE((d / "bob.key").stat().st_mode) == 0o600
    assert run([FLUIDITY, "certs", "client", "bob", "--dir", str(d)]).returncode != 0
