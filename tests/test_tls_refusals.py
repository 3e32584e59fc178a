"""Who the server's TLS port refuses: expired, not yet valid, wrong extended key usage,
and revoked certificates (a deny list re-read while the server runs)."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import pytest
from support import agent_config, curl, server_config, start_twistd, wait_connected, wait_until

from tunnel.wire import pki

NOW = datetime.datetime.now(datetime.UTC)


def issued(certs, tmp_path, name: str, **kwargs) -> tuple[str, str]:
    ca_cert, ca_key = pki.load_ca(certs.directory)
    cert, key = pki.issue(ca_cert, ca_key, name, **kwargs)
    saved = pki.save(tmp_path, name, cert, key, force=True)
    return str(saved.cert_path), str(saved.key_path)


def through_server(server_port: int, certs, https_origin, cert: str, key: str):
    return curl(
        "--proxy",
        f"https://127.0.0.1:{server_port}",
        "--proxy-cacert",
        certs.path("ca.pem"),
        "--proxy-cert",
        cert,
        "--proxy-key",
        key,
        "--cacert",
        https_origin.ca,
        f"https://127.0.0.1:{https_origin.port}/gate",
        timeout=20,
    )


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("expired", {"server": False, "now": NOW - datetime.timedelta(days=30), "days": 1}),
        ("not-yet-valid", {"server": False, "now": NOW + datetime.timedelta(days=30), "days": 365}),
        ("server-usage", {"server": True}),  # serverAuth only: not a client certificate
    ],
)
def test_bad_client_certificates_are_refused(tunnel, https_origin, tmp_path, name, kwargs):
    cert, key = issued(tunnel.certs, tmp_path, name, **kwargs)
    result = through_server(tunnel.server.port, tunnel.certs, https_origin, cert, key)
    assert result.returncode != 0 and b"hello from" not in result.stdout, result.stderr
    fresh_cert, fresh_key = issued(tunnel.certs, tmp_path, f"{name}-control", server=False)
    control = through_server(tunnel.server.port, tunnel.certs, https_origin, fresh_cert, fresh_key)
    assert control.returncode == 0, control.stderr  # same CA, valid today, clientAuth: fine


def test_the_servers_own_certificate_is_not_a_client_certificate(tunnel, https_origin):
    result = through_server(
        tunnel.server.port, tunnel.certs, https_origin, tunnel.certs.path("server.pem"), tunnel.certs.path("server.key")
    )
    assert result.returncode != 0 and b"hello from" not in result.stdout


@pytest.mark.processes
def test_revoked_certificates_and_a_live_reload(certs, https_origin, http_origin, tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    alice = x509.load_pem_x509_certificate(Path(certs.path("alice.pem")).read_bytes())
    client = x509.load_pem_x509_certificate(Path(certs.path("client.pem")).read_bytes())
    deny = tmp_path / "revoked.txt"
    deny.write_text(f"# revoked laptops\n{alice.serial_number:x}\n")
    server = start_twistd("server", server_config(certs, revoked_file=str(deny)), tmp_path)
    agent = start_twistd("agent", agent_config(certs, server.port, reconnect_max_delay="0.5s"), tmp_path)
    try:
        wait_connected(agent)
        refused = through_server(server.port, certs, https_origin, certs.path("alice.pem"), certs.path("alice.key"))
        assert refused.returncode != 0 and b"hello from" not in refused.stdout
        assert "certificate serial" in server.log() and "is revoked" in server.log()

        # Revoke the connected agent by fingerprint: its connection is closed within seconds.
        fingerprint = client.fingerprint(hashes.SHA256()).hex()
        deny.write_text(f"{alice.serial_number:x}\nsha256:{fingerprint}\n")
        wait_until(lambda: "its certificate was revoked" in server.log(), 10)
        time.sleep(1.5)
        result = curl("-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/plain", timeout=10)
        assert b"http-origin" not in result.stdout  # it cannot come back

        # A malformed edit keeps the list in force; a fixed one lets the agent back.
        deny.write_text("not a serial!\n")
        wait_until(lambda: "could not be reloaded" in server.log(), 10)
        deny.write_text("# nobody\n")
        wait_connected(agent, 15)
        result = curl("-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/plain")
        assert b"http-origin" in result.stdout
    finally:
        assert agent.stop() == 0
        assert server.stop() == 0
    server.assert_no_unhandled_errors()


def test_a_bad_revoked_file_is_one_line_at_start(certs, tmp_path):
    import yaml

    from tunnel.taps_server import Options as ServerOptions

    deny = tmp_path / "revoked.txt"
    deny.write_text("zz-not-hex\n")
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(server_config(certs, revoked_file=str(deny))))
    with pytest.raises(SystemExit, match=r"revoked.txt:1: expected a hex serial"):
        ServerOptions().parseOptions(["--config", str(path)])
    path.write_text(yaml.safe_dump(server_config(certs, revoked_file=str(tmp_path / "missing.txt"))))
    with pytest.raises(SystemExit, match="revoked_file"):
        ServerOptions().parseOptions(["--config", str(path)])


@pytest.mark.processes
@pytest.mark.parametrize("first", ["", "# nobody revoked yet\n"])
def test_a_list_that_starts_empty_is_still_watched(certs, tmp_path, first):
    """Issue 24, item 2: the first revocation ever written cuts the agent's open streams
    within the reload interval, and its reconnects are refused; a garbled edit keeps it out."""
    import socket

    from cryptography import x509
    from test_relay import Destination, ending, open_through, stream_forever

    client = x509.load_pem_x509_certificate(Path(certs.path("client.pem")).read_bytes())
    deny = tmp_path / "revoked.txt"
    deny.write_text(first)
    server = start_twistd("server", server_config(certs, revoked_file=str(deny)), tmp_path)
    agent = start_twistd("agent", agent_config(certs, server.port, reconnect_max_delay="0.5s"), tmp_path)
    dest = Destination(stream_forever)
    try:
        wait_connected(agent)
        sock = open_through("connect", agent.port, dest.authority)
        with sock:
            sock.recv(65536)
            deny.write_text(f"{first}{client.serial_number:x}\n")
            revoked_at = time.monotonic()
            total, how = ending(sock, 15)
            cut_after = time.monotonic() - revoked_at
        assert how == "reset", (total, how)
        assert cut_after < 2.0 + 2.0, cut_after  # REVOCATION_CHECK, and a margin
        print(f"revoked agent cut {cut_after:.2f} s after the list was written")
        assert "its certificate was revoked" in server.log()
        deny.write_text("garbled!\n")
        wait_until(lambda: "could not be reloaded" in server.log(), 10)
        time.sleep(2)  # several reconnect attempts (reconnect_max_delay 0.5 s)
        with pytest.raises((ConnectionError, socket.timeout, AssertionError)):
            sock = open_through("connect", agent.port, dest.authority)
            sock.settimeout(3)
            assert sock.recv(1)
        assert server.log().count("is revoked") >= 2  # reconnects were refused, not let in
    finally:
        dest.close()
        agent.stop()
        server.stop()
    server.assert_no_unhandled_errors()
