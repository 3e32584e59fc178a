"""TLS 1.3 mutual-authentication contexts for both ends, built with Twisted's own TLS API.

The server requires a client certificate chained to the private CA and offers ALPN
`h2` (the agent) and `http/1.1` (standard HTTPS-proxy clients). The agent checks the
server certificate against the CA *and* a configured name with service_identity,
never against the IP it dials: the Fargate address changes at every start.
"""

from __future__ import annotations

import contextlib
import datetime

from cryptography import x509
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

from tunnel.config import AgentSettings, ConfigError, Settings, read_pem
from tunnel.wire.key_privacy import exposure

ALPN_H2 = b"h2"
ALPN_HTTP11 = b"http/1.1"


def _check_key_file_mode(spec: str, what: str) -> None:
    if spec.startswith("env:"):
        return
    exposed = exposure(spec)
    if exposed is not None:
        raise ConfigError(f"{what}: {exposed[0]}; run {exposed[1]}")


def _certificate(pem: bytes, what: str, source: str) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise ConfigError(f"{what}: {source} is not a PEM certificate ({e})") from None
    now = datetime.datetime.now(datetime.UTC)
    if cert.not_valid_after_utc < now:
        raise ConfigError(f"{what}: {source} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    if cert.not_valid_before_utc > now:
        raise ConfigError(f"{what}: {source} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    return cert


def _material(config: Settings) -> tuple[ssl.PrivateCertificate, ssl.Certificate]:
    cert_pem = read_pem(config.cert_file, "cert_file")
    _check_key_file_mode(config.key_file, "key_file")
    key_pem = read_pem(config.key_file, "key_file")
    ca_pem = read_pem(config.ca_file, "ca_file")
    _certificate(cert_pem, "cert_file", config.cert_file)
    _certificate(ca_pem, "ca_file", config.ca_file)
    try:
        mine = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    except Exception as e:  # pyOpenSSL raises its own error types for bad PEM
        raise ConfigError(f"key_file: cannot load {config.key_file} with {config.cert_file}: {e}") from None
    try:
        ca = ssl.Certificate.loadPEM(ca_pem)
    except Exception as e:
        raise ConfigError(f"ca_file: cannot load {config.ca_file}: {e}") from None
    return mine, ca


def server_options(config: Settings) -> ssl.CertificateOptions:
    """Context factory for the server's listener; built (and so checked) before listening."""
    mine, ca = _material(config)
    with _mismatch_is_config_error(config):
        options = ssl.CertificateOptions(
            privateKey=mine.privateKey.original,
            certificate=mine.original,
            verify=True,
            caCerts=[ca.original],
            requireCertificate=True,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_3,
            acceptableProtocols=[ALPN_H2, ALPN_HTTP11],
        )
        options.getContext()
    return options


def ca_certificate(config: Settings) -> x509.Certificate:
    """The CA that must have issued the peer's certificate (to name an impostor when it did not)."""
    return x509.load_pem_x509_certificate(read_pem(config.ca_file, "ca_file"))


def client_options(config: Settings) -> IOpenSSLClientConnectionCreator:
    """Connection creator for the agent: verifies CA and `server_name`, offers only h2."""
    if not isinstance(config, AgentSettings):
        raise TypeError("client_options is the agent's: it needs its server_name")
    mine, ca = _material(config)
    with _mismatch_is_config_error(config):
        return ssl.optionsForClientTLS(
            config.server_name,
            trustRoot=ca,
            clientCertificate=mine,
            acceptableProtocols=[ALPN_H2],
            extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_3},
        )


@contextlib.contextmanager
def _mismatch_is_config_error(config: Settings):
    """OpenSSL builds the context eagerly: a key that does not match its cert fails here, not at first use."""
    try:
        yield
    except SSL.Error as e:
        raise ConfigError(f"key_file: {config.key_file} does not match {config.cert_file} ({e})") from None
