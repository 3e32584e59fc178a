"""Behind a TLS-inspecting proxy (real mitmproxy with its own CA) the agent names the
interception, the issuer it met and what to ask for, and sends nothing over it (issue 25,
item 5)."""

from __future__ import annotations

import json
import urllib.request

import pytest
from mitmproxy_lab import Mitmproxy
from support import agent_config, curl, server_config, start_twistd, wait_until

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)


def health(agent) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.port}/health", timeout=5) as r:
        return json.load(r)


def test_the_agent_names_an_intercepting_proxy_and_its_issuer(certs, http_origin, tmp_path):
    server = start_twistd("server", server_config(certs), tmp_path)
    mitm = Mitmproxy()
    try:
        agent = start_twistd("agent", agent_config(certs, server.port, upstream_proxy=mitm.url), tmp_path)
        try:
            wait_until(
                lambda: (health(agent)["last_error"] or "").startswith("something in the network path intercepts TLS"),
                20,
            )
            error = health(agent)["last_error"]
            assert "issued by O=mitmproxy,CN=mitmproxy, not by your CA" in error, error
            assert f"TLS-inspection bypass for 127.0.0.1:{server.port}" in error, error
            result = curl("-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/x", timeout=20)
            assert b"intercepts TLS" in result.stdout and b"mitmproxy" in result.stdout, (
                result
            )  # the client's 503 says so
            assert not health(agent)["connected"]
        finally:
            assert agent.stop() == 0
        assert "intercepts TLS" in agent.log()
        # Nothing crossed: the proxy never saw a request inside the tunnel (the agent's TLS
        # handshake failed before any HTTP/2 byte), and the server no agent stream.
        assert "does not trust the proxy's certificate" in mitm.output() or "client does not trust" in mitm.output(), (
            mitm.output()[-2000:]
        )
        agent.assert_no_unhandled_errors()
    finally:
        mitm.stop()
        server.stop()


def test_doctor_completes_the_real_handshake_through_a_proxy(certs, tmp_path):
    from squid import Squid
    from test_doctor import doctor

    server = start_twistd("server", server_config(certs), tmp_path)
    squid = Squid((), {}, ssl_ports=(server.port,))
    try:
        code, out = doctor(agent_config(certs, server.port, upstream_proxy=f"http://127.0.0.1:{squid.port}"), tmp_path)
    finally:
        squid.stop()
        server.stop()
    assert code == 0, out
    assert (
        f"ok    TLS handshake: 127.0.0.1:{server.port} (through http://127.0.0.1:{squid.port}): TLS 1.3, client "
        f"certificate accepted, ALPN h2" in out
    ), out
    assert "not tried" not in out and out.strip().endswith("all good."), out


def test_doctor_names_the_intercepting_proxy_and_fails(certs, tmp_path):
    from test_doctor import doctor

    server = start_twistd("server", server_config(certs), tmp_path)
    mitm = Mitmproxy()
    try:
        code, out = doctor(agent_config(certs, server.port, upstream_proxy=mitm.url), tmp_path)
    finally:
        mitm.stop()
        server.stop()
    assert code != 0, out
    line = next((each for each in out.splitlines() if "TLS interception" in each), "")
    assert line.startswith("FAIL") and "issued by O=mitmproxy,CN=mitmproxy, not by your CA" in line, out
    assert f"TLS-inspection bypass for 127.0.0.1:{server.port}" in out and "all good" not in out, out
