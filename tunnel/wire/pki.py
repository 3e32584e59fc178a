"""A private CA and the certificates Fluidity's mutual TLS needs, made with `cryptography`.

ECDSA P-256 keeps handshakes cheap on a 0.25 vCPU task. Server and client
certificates carry the matching extended key usage so that one cannot stand in for
the other. Keys are written 0600 and nothing is overwritten without `force`.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tunnel.wire.key_privacy import write_private

SERVER_NAMES = ("fluidity-server", "localhost")
SERVER_IPS = ("127.0.0.1", "::1")


class PKIError(Exception):
    pass


@dataclass
class Issued:
    cert_path: Path
    key_path: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fluidity"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write(path: Path, data: bytes, private: bool, force: bool) -> None:
    if path.exists() and not force:
        raise PKIError(f"{path} exists; pass --force to replace it")
    if private:  # readable by the owner only from the start, the platform's way
        write_private(path, data)
    else:
        path.write_bytes(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key, days: int, now: datetime.datetime | None = None
) -> x509.CertificateBuilder:
    now = now or datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def make_ca(
    common_name: str = "Fluidity private CA", days: int = 3650
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    cert = (
        _builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    *,
    server: bool,
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
    days: int = 825,
    now: datetime.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate for a server (serverAuth + SANs) or a client (clientAuth)."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(_name(common_name), ca_cert.subject, key.public_key(), days, now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def save(directory: Path, stem: str, cert: x509.Certificate, key, force: bool) -> Issued:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    _write(key_path, _key_pem(key), private=True, force=force)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False, force=force)
    return Issued(cert_path, key_path)


def load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    except FileNotFoundError as e:
        raise PKIError(f"{e.filename} not found; run `fluidity certs init --dir {directory}` first") from None
    except ValueError as e:
        raise PKIError(f"cannot load the CA in {directory}: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"the CA key in {directory} is not an elliptic-curve key (fluidity certs init makes one)")
    return cert, key


def init(directory: Path, force: bool = False, client_name: str = "client") -> list[Path]:
    """CA + server certificate + one client certificate; refuses to clobber without force."""
    directory.mkdir(parents=True, exist_ok=True)
    stems = ["ca", "server", client_name]
    if not force:
        existing = [p for s in stems for p in (directory / f"{s}.pem", directory / f"{s}.key") if p.exists()]
        if existing:
            raise PKIError(f"{existing[0]} exists; pass --force to replace the whole set")
    ca_cert, ca_key = make_ca()
    written = save(directory, "ca", ca_cert, ca_key, force)
    server = save(
        directory,
        "server",
        *issue(ca_cert, ca_key, "fluidity-server", server=True, dns_names=SERVER_NAMES, ip_addresses=SERVER_IPS),
        force=force,
    )
    client = save(directory, client_name, *issue(ca_cert, ca_key, client_name, server=False), force=force)
    return [written.cert_path, written.key_path, server.cert_path, server.key_path, client.cert_path, client.key_path]


def issue_client(directory: Path, name: str, force: bool = False) -> Issued:
    if not name or "/" in name or name.startswith(".") or name in ("ca", "server"):
        raise PKIError(f"bad client name {name!r}")
    ca_cert, ca_key = load_ca(directory)
    return save(directory, name, *issue(ca_cert, ca_key, name, server=False), force=force)


def ensure_dev_set(directory: Path) -> bool:
    """Make a dev set when none is there (the local demo); True when it made one."""
    if (directory / "ca.pem").exists():
        return False
    init(directory)
    return True
