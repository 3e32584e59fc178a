"""Proxy credentials go only to proxies the user named or allowed (tunnel/proxy_trust.py),
tried as an attacker would: a real squid answers WPAD for the laptop's domain and asks for
Basic, Digest or NTLM. What reached it is read from squid's own log of the
Proxy-Authorization each request brought. The agent runs as laptop.corp.lab.test (UTS and
mount namespaces of its own, its own hosts file; the network stays loopback) so pypac's WPAD
finds http://wpad.corp.lab.test/wpad.dat, served on a loopback address the test picks."""

from __future__ import annotations

import os
import random
import shutil
import urllib.request

import pytest
from squid import Squid
from support import agent_config, curl, start_twistd, wait_connected
from test_doctor import doctor
from test_proxy_choice import PacServer

from tunnel.config import AGENT_KEYS, ConfigError, load
from tunnel.proxy_trust import allows, check_allowed

pytestmark = pytest.mark.processes  # real processes (twistd, squid, curl, namespaces)

USERS = {"alice": "s3cret pass"}
PROXY = "proxy.corp.lab.test"
SCHEMES = {"basic": "Basic", "digest": "Digest", "ntlm": "NTLM"}


class Wpad:
    """wpad.corp.lab.test serving wpad.dat that names `proxy.corp.lab.test:port` (squid, on
    127.0.0.1), and the prefix that runs a program as laptop.corp.lab.test."""

    def __init__(self, folder, proxy_port: int) -> None:
        assert shutil.which("unshare") and os.geteuid() == 0, "needs root and unshare (util-linux; .ci/run installs it)"
        address = f"127.80.{random.randint(1, 254)}.{random.randint(1, 254)}"
        script = f'function FindProxyForURL(url, host) {{ return "PROXY {PROXY}:{proxy_port}"; }}'
        self.pac = PacServer(script, address=(address, 80), path="/wpad.dat")
        hosts = folder / "hosts"
        hosts.write_text(
            f"127.0.0.1 localhost\n127.0.1.1 laptop.corp.lab.test laptop\n{address} wpad.corp.lab.test\n"
            f"127.0.0.1 {PROXY}\n"
        )
        self.prefix = (
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "sh",
            "-c",
            f'mount --bind {hosts} /etc/hosts && hostname laptop.corp.lab.test && exec "$@"',
            "sh",
        )

    def close(self) -> None:
        self.pac.close()


def agent_found_by_wpad(tunnel, tmp_path, squid: Squid, wpad: Wpad, **settings):
    config = agent_config(
        tunnel.certs,
        tunnel.server.port,
        upstream_proxy="auto",
        upstream_proxy_user="alice",
        upstream_proxy_password=USERS["alice"],
        tunnel_wait="2s",
        **settings,
    )
    return start_twistd("agent", config, tmp_path, prefix=wpad.prefix)


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_a_proxy_found_by_wpad_gets_no_credentials(tunnel, http_origin, tmp_path, scheme):
    squid = Squid((scheme,), USERS, ssl_ports=(tunnel.server.port,))
    wpad = Wpad(tmp_path, squid.port)
    try:
        agent = agent_found_by_wpad(tunnel, tmp_path, squid, wpad)
        try:
            answer = curl(
                "-i", "-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/x", timeout=20
            ).stdout.decode(errors="replace")
            with urllib.request.urlopen(f"http://127.0.0.1:{agent.port}/", timeout=10) as page:
                status_page = page.read().decode()
        finally:
            agent.stop()
        log = agent.log()
        # The agent did go to the proxy WPAD named (squid challenged it), and sent it nothing.
        assert "using the PAC file at http://wpad.corp.lab.test/wpad.dat (WPAD)" in log, log[-3000:]
        assert f"CONNECT 127.0.0.1:{tunnel.server.port}" in squid.access_log(), squid.access_log()
        assert squid.authorizations() == [], squid.authorizations()
        refusal = (
            f"the proxy asks for {SCHEMES[scheme]} authentication and gets no credentials: http://{PROXY}:{squid.port}"
            " was found in the PAC file at http://wpad.corp.lab.test/wpad.dat (WPAD)"
        )
        allow = f"upstream_proxy_auth_allow: [{PROXY}]"
        assert answer.startswith("HTTP/1.1 503") and refusal in answer and allow in answer, answer
        assert refusal in log and allow in log, log[-3000:]
        assert "gets no credentials" in status_page and allow in status_page, status_page
        assert "s3cret" not in answer + log + status_page
        agent.assert_no_unhandled_errors()
    finally:
        wpad.close()
        squid.stop()


@pytest.mark.parametrize("scheme, entry", [("basic", PROXY), ("digest", "*.corp.lab.test"), ("ntlm", "*.lab.test")])
def test_a_proxy_found_by_wpad_and_allowed_gets_them(tunnel, http_origin, tmp_path, scheme, entry):
    squid = Squid((scheme,), USERS, ssl_ports=(tunnel.server.port,))
    wpad = Wpad(tmp_path, squid.port)
    try:
        agent = agent_found_by_wpad(tunnel, tmp_path, squid, wpad, upstream_proxy_auth_allow=[entry])
        try:
            wait_connected(agent, 20)
            result = curl("-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/allowed")
            assert b"hello from http-origin /allowed" in result.stdout, result
        finally:
            agent.stop()
        sent = squid.authorizations()
        assert sent and all(value.startswith(f"{SCHEMES[scheme]} ") for value in sent), sent
        assert f"authenticated to the upstream proxy with {SCHEMES[scheme]} as alice" in agent.log()
        agent.assert_no_unhandled_errors()
    finally:
        wpad.close()
        squid.stop()


def test_a_proxy_named_by_https_proxy_is_the_users_own(tunnel, http_origin, tmp_path):
    """$HTTPS_PROXY is the user's word, like upstream_proxy: it needs no entry in the list."""
    squid = Squid(("basic",), USERS, ssl_ports=(tunnel.server.port,))
    try:
        config = agent_config(
            tunnel.certs, tunnel.server.port, upstream_proxy_user="alice", upstream_proxy_password=USERS["alice"]
        )
        agent = start_twistd("agent", config, tmp_path, env={"HTTPS_PROXY": f"http://127.0.0.1:{squid.port}"})
        try:
            wait_connected(agent, 20)
        finally:
            agent.stop()
        assert [v.split()[0] for v in squid.authorizations()] == ["Basic"], squid.authorizations()
    finally:
        squid.stop()


def test_doctor_says_which_proxy_asked_and_what_to_allow(tunnel, tmp_path):
    squid = Squid(("digest",), USERS, ssl_ports=(tunnel.server.port,))
    pac = PacServer(f'function FindProxyForURL(url, host) {{ return "PROXY 127.0.0.1:{squid.port}"; }}')
    try:
        settings = agent_config(
            tunnel.certs,
            tunnel.server.port,
            upstream_proxy="auto",
            pac_url=pac.url,
            upstream_proxy_user="alice",
            upstream_proxy_password=USERS["alice"],
        )
        code, out = doctor(settings, tmp_path, "found.yaml")
        assert (
            code == 1
            and "FAIL  upstream proxy" in out
            and "asks for Digest authentication and gets no credentials" in out
            and "upstream_proxy_auth_allow: [127.0.0.1]" in out
        ), out
        assert squid.authorizations() == [] and "s3cret" not in out, squid.authorizations()
        code, out = doctor({**settings, "upstream_proxy_auth_allow": ["127.0.0.1"]}, tmp_path, "allowed.yaml")
        assert "ok    upstream proxy" in out and "authenticated with Digest" in out, out
        assert [v.split()[0] for v in squid.authorizations()][-1] == "Digest", squid.authorizations()
    finally:
        pac.close()
        squid.stop()


def test_the_list_matches_names_patterns_and_addresses_only():
    entries = check_allowed(["Proxy.Corp.Example.", "*.corp.example", "10.0.0.5", "[::1]"])
    assert entries == ["proxy.corp.example", "*.corp.example", "10.0.0.5", "::1"]
    assert allows(entries, "PROXY.corp.example") and allows(entries, "a.b.corp.example")
    assert allows(entries, "0:0::1") and allows(entries, "10.0.0.5")
    for host in ("corp.example", "evilcorp.example", "corp.example.evil.test", "10.0.0.50", "proxy"):
        assert not allows(entries, host), host
    for bad in ("*", "http://proxy:3128", "proxy:3128", "*.", "a b", "*corp.example"):
        with pytest.raises(ValueError, match="not a proxy host name"):
            check_allowed([bad])
    with pytest.raises(ConfigError, match=r"'upstream_proxy_auth_allow' .*'\*' is not a proxy host name"):
        load(AGENT_KEYS, None, {"upstream_proxy_auth_allow": "proxy.corp.example,*"})
    settings = load(AGENT_KEYS, None, {"upstream_proxy_auth_allow": "a.example, *.b.example"})
    assert settings.upstream_proxy_auth_allow == ("a.example", "*.b.example")
