"""The server's http/1.1 path with curl as a standard HTTPS-proxy client, and its TLS gate."""

from __future__ import annotations

from support import curl


def _via_server(tunnel, https_origin, cert: str | None, key: str | None, proxy_host: str = "127.0.0.1", extra=()):
    args = ["--proxy", f"https://{proxy_host}:{tunnel.server.port}", "--proxy-cacert", tunnel.certs.path("ca.pem"), "--cacert", https_origin.ca]
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
    result = _via_server(tunnel, https_origin, tunnel.certs.path("other/client.pem"), tunnel.certs.path("other/client.key"))
    assert result.returncode != 0
    assert b"hello from" not in result.stdout


def test_client_that_expects_another_name_refuses_the_server(tunnel, https_origin):
    extra = ("--resolve", f"not-fluidity:{tunnel.server.port}:127.0.0.1")
    result = _via_server(tunnel, https_origin, tunnel.certs.path("client.pem"), tunnel.certs.path("client.key"), proxy_host="not-fluidity", extra=extra)
    assert result.returncode != 0
    assert b"hello from" not in result.stdout
    # And with the name the certificate does carry, the same call works.
    extra = ("--resolve", f"fluidity-server:{tunnel.server.port}:127.0.0.1")
    ok = _via_server(tunnel, https_origin, tunnel.certs.path("client.pem"), tunnel.certs.path("client.key"), proxy_host="fluidity-server", extra=extra)
    assert ok.returncode == 0, ok.stderr


def test_non_connect_method_is_405(tunnel):
    result = curl(
        "-w", "%{http_code}", "--cacert", tunnel.certs.path("ca.pem"), "--cert", tunnel.certs.path("client.pem"), "--key", tunnel.certs.path("client.key"),
        f"https://127.0.0.1:{tunnel.server.port}/", timeout=10,
    )
    assert result.stdout.endswith(b"405"), result


def test_http11_egress_refusal_is_403(tunnel):
    result = curl(
        "-w", "%{http_code}", "--proxy", f"https://127.0.0.1:{tunnel.server.port}", "--proxy-cacert", tunnel.certs.path("ca.pem"),
        "--proxy-cert", tunnel.certs.path("client.pem"), "--proxy-key", tunnel.certs.path("client.key"),
        "-p", "http://169.254.169.254/latest/meta-data/", timeout=10,
    )
    assert b"403" in result.stderr + result.stdout, result
