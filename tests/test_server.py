"""The server's http/1.1 path with curl as a standard HTTPS-proxy client, and its TLS gate."""

from __future__ import annotations

import pytest
from support import curl, read_head

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)


def _via_server(tunnel, https_origin, cert: str | None, key: str | None, proxy_host: str = "127.0.0.1", extra=()):
    args = [
        "--proxy",
        f"https://{proxy_host}:{tunnel.server.port}",
        "--proxy-cacert",
        tunnel.certs.path("ca.pem"),
        "--cacert",
        https_origin.ca,
    ]
    if cert:
        args += ["--proxy-cert", cert, "--proxy-key", key]
    return curl(*args, *extra, f"https://127.0.0.1:{https_origin.port}/direct", timeout=20)


def test_client_certificate_gets_through(tunnel, https_origin):
    result = _via_server(tunnel, https_origin, tunnel.certs.path("client.pem"), tunnel.certs.path("client.key"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"hello from https-origin /direct")


def test_second_issued_client_certificate_gets_through(tunnel, https_origin):
    result = _via_server(tunnel, https_origin, tunnel.certs.path("alice.pem"), tunnel.certs.path("alice.key"))
    assert result.returncode == 0, result.stderr


def test_no_client_certificate_is_refused(tunnel, https_origin):
    result = _via_server(tunnel, https_origin, None, None)
    assert result.returncode != 0
    assert b"hello from" not in result.stdout


def test_certificate_from_another_ca_is_refused(tunnel, https_origin):
    result = _via_server(
        tunnel, https_origin, tunnel.certs.path("other/client.pem"), tunnel.certs.path("other/client.key")
    )
    assert result.returncode != 0
    assert b"hello from" not in result.stdout


def test_client_that_expects_another_name_refuses_the_server(tunnel, https_origin):
    extra = ("--resolve", f"not-fluidity:{tunnel.server.port}:127.0.0.1")
    result = _via_server(
        tunnel,
        https_origin,
        tunnel.certs.path("client.pem"),
        tunnel.certs.path("client.key"),
        proxy_host="not-fluidity",
        extra=extra,
    )
    assert result.returncode != 0
    assert b"hello from" not in result.stdout
    # And with the name the certificate does carry, the same call works.
    extra = ("--resolve", f"fluidity-server:{tunnel.server.port}:127.0.0.1")
    ok = _via_server(
        tunnel,
        https_origin,
        tunnel.certs.path("client.pem"),
        tunnel.certs.path("client.key"),
        proxy_host="fluidity-server",
        extra=extra,
    )
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("version", ["--http2", "--http1.1"])
def test_non_connect_method_is_405(tunnel, version):
    result = curl(
        "-i",
        version,
        "--cacert",
        tunnel.certs.path("ca.pem"),
        "--cert",
        tunnel.certs.path("client.pem"),
        "--key",
        tunnel.certs.path("client.key"),
        f"https://127.0.0.1:{tunnel.server.port}/",
        timeout=10,
    )
    assert b" 405" in result.stdout.split(b"\r\n", 1)[0], result
    assert b"--proxytunnel" in result.stdout  # it says how to use it (issue 26, item 7): body or Proxy-Status


def test_an_egress_refusal_names_the_setting_that_opens_it(tunnel):
    result = curl("-x", tunnel.proxy, "http://169.254.169.254/latest/meta-data/", timeout=10)
    assert b"egress policy refuses 169.254.169.254:80" in result.stdout and b"egress_allow" in result.stdout, result


def test_http11_egress_refusal_is_403(tunnel):
    result = curl(
        "-w",
        "%{http_code}",
        "--proxy",
        f"https://127.0.0.1:{tunnel.server.port}",
        "--proxy-cacert",
        tunnel.certs.path("ca.pem"),
        "--proxy-cert",
        tunnel.certs.path("client.pem"),
        "--proxy-key",
        tunnel.certs.path("client.key"),
        "-p",
        "http://169.254.169.254/latest/meta-data/",
        timeout=10,
    )
    assert b"403" in result.stderr + result.stdout, result


def test_client_leaving_before_the_dial_completes_is_ordinary(certs, tmp_path):
    """An http/1.1 CONNECT whose client closes while the server still dials: no error logged."""
    import socket
    import ssl
    import time

    from support import server_config, start_twistd

    full = socket.socket()  # a listener whose accept queue is full: SYNs to it go unanswered
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(full.getsockname())
        fillers.append(s)
    server = start_twistd("server", server_config(certs, dial_timeout="30s"), tmp_path)
    try:
        context = ssl.create_default_context(cafile=certs.path("ca.pem"))
        context.load_cert_chain(certs.path("client.pem"), certs.path("client.key"))
        context.set_alpn_protocols(["http/1.1"])
        for _ in range(5):
            with (
                socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
                context.wrap_socket(raw, server_hostname="fluidity-server") as tls,
            ):
                tls.sendall(f"CONNECT 127.0.0.1:{full.getsockname()[1]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                time.sleep(0.3)
        time.sleep(0.5)
    finally:
        server.stop()
        for s in [*fillers, full]:
            s.close()
    assert "dial failed unexpectedly" not in server.log()
    server.assert_no_unhandled_errors()


def test_http11_connect_with_content_is_400(tunnel, echo):
    """RFC 9110 §9.3.6 (issue 24, item 6), on the server's own http/1.1 front."""
    from test_relay import tls_to_server

    before = echo.connections
    for framing in (b"Content-Length: 5\r\n\r\nhello", b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"):
        sock = tls_to_server(tunnel.certs, tunnel.server)
        with sock:
            sock.sendall(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\nHost: x\r\n".encode() + framing)
            answer = read_head(sock)
        assert answer.startswith(b"HTTP/1.1 400"), answer
    assert echo.connections == before
