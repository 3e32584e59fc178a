"""Challenge-driven proxy authentication (issue 25, item 3) against a real squid and its
own helpers: Basic (basic_ncsa_auth), Digest (digest_file_auth) and NTLM (ntlm_fake_auth,
squid's test helper: the real NTLM exchange, any user accepted). The agent answers what
the proxy asks for, strongest first, and a refusal is a readable 503."""

from __future__ import annotations

import pytest
from squid import Squid
from support import agent_config, curl, start_twistd, wait_connected

from tunnel.agent.proxy_auth import ProxyAuthenticator, ProxyAuthError, parse_challenges

USERS = {"alice": "s3cret pass"}


def through_squid(tunnel, tmp_path, squid: Squid, user: str, password: str, name: str = "agent"):
    from urllib.parse import quote

    proxy = (
        f"http://{quote(user)}:{quote(password)}@127.0.0.1:{squid.port}" if user else f"http://127.0.0.1:{squid.port}"
    )
    return start_twistd(
        "agent",
        agent_config(tunnel.certs, tunnel.server.port, upstream_proxy=proxy, tunnel_wait="1s"),
        tmp_path,
        name=name,
    )


@pytest.mark.parametrize(
    "schemes, expect",
    [
        (("basic",), "Basic"),
        (("digest",), "Digest"),
        (("ntlm",), "NTLM"),
        (("ntlm", "digest", "basic"), "NTLM"),
        (("digest", "basic"), "Digest"),
    ],
)
def test_the_agent_answers_what_the_proxy_asks_for(tunnel, http_origin, tmp_path, schemes, expect):
    squid = Squid(schemes, USERS, ssl_ports=(tunnel.server.port,))
    try:
        agent = through_squid(tunnel, tmp_path, squid, "alice", USERS["alice"])
        try:
            wait_connected(agent, 20)
            result = curl("-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/via-squid")
            assert b"hello from http-origin /via-squid" in result.stdout, result
        finally:
            agent.stop()
        log = agent.log()
        assert f"authenticated to the upstream proxy with {expect} as alice" in log, log[-2000:]
        assert "s3cret" not in log
        tunnelled = [
            line.split()
            for line in squid.access_log().splitlines()
            if f"CONNECT 127.0.0.1:{tunnel.server.port}" in line and "TCP_TUNNEL/200" in line
        ]
        assert tunnelled, squid.access_log()
        user = tunnelled[0][7]  # squid's user field: "-" when nobody authenticated
        assert user == "alice" if expect != "NTLM" else user != "-", tunnelled  # ntlm_fake_auth names its own user
        agent.assert_no_unhandled_errors()
    finally:
        squid.stop()


@pytest.mark.parametrize("schemes", [("basic",), ("digest",)])
def test_wrong_credentials_are_a_readable_503(tunnel, http_origin, tmp_path, schemes):
    squid = Squid(schemes, USERS, ssl_ports=(tunnel.server.port,))
    try:
        agent = through_squid(tunnel, tmp_path, squid, "alice", "wrong")
        try:
            result = curl(
                "-i", "-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/x", timeout=20
            )
            text = result.stdout.decode(errors="replace")
            assert text.startswith("HTTP/1.1 503"), text
            assert "407" in text and f"refused the {schemes[0].capitalize()} credentials for alice" in text, text
        finally:
            agent.stop()
        assert "wrong" not in agent.log()
    finally:
        squid.stop()


def test_no_credentials_for_a_proxy_that_wants_them_says_what_to_set(tunnel, http_origin, tmp_path):
    squid = Squid(("digest",), USERS, ssl_ports=(tunnel.server.port,))
    try:
        agent = through_squid(tunnel, tmp_path, squid, "", "")
        try:
            result = curl("-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/x", timeout=20)
            assert b"asks for Digest authentication and no username is configured" in result.stdout, result
        finally:
            agent.stop()
    finally:
        squid.stop()


def test_a_proxy_that_allows_only_443_says_how_to_move_the_server(tunnel, http_origin, tmp_path):
    """A stock squid's `http_access deny CONNECT !SSL_ports` (issue 25, item 1's hint)."""
    squid = Squid((), {})
    try:
        agent = through_squid(tunnel, tmp_path, squid, "", "")
        try:
            result = curl("-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/x", timeout=20)
            assert (
                b"403" in result.stdout
                and b"allows CONNECT to port 443 only" in result.stdout
                and b"containerPort 443" in result.stdout
            ), result
        finally:
            agent.stop()
    finally:
        squid.stop()


def test_challenges_parse_as_proxies_send_them():
    found = parse_challenges(
        [
            "Negotiate, NTLM",
            'Digest realm="a, b", nonce="n\\"x", qop="auth,auth-int", algorithm=MD5',
            "Basic realm=squid",
        ]
    )
    assert [(c.scheme, c.params.get("realm"), c.params.get("nonce")) for c in found] == [
        ("negotiate", None, None),
        ("ntlm", None, None),
        ("digest", "a, b", 'n"x'),
        ("basic", "squid", None),
    ]
    assert parse_challenges(["NTLM TlRMTVNTUAACAAAA+/8=="])[0].token == "TlRMTVNTUAACAAAA+/8=="


def test_digest_answers_rfc_7616s_example():
    """RFC 7616 §3.9.1 (MD5): the response the RFC prints, from its own inputs."""
    auth = ProxyAuthenticator("Mufasa", "Circle of Life", "proxy")
    auth.new_cnonce = lambda: "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
    values = [
        'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=MD5, '
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    ]
    header = auth.answer(values, "GET", "/dir/index.html")
    assert 'response="8ca523f5e9506fed4657c9700eebdbec"' in header, header
    assert (
        "qop=auth" in header
        and "nc=00000001" in header
        and 'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"' in header
    )
    with pytest.raises(ProxyAuthError, match="refused the Digest credentials"):
        auth.answer(values, "GET", "/dir/index.html")  # the same challenge again: a refusal


def test_doctor_authenticates_as_the_agent_does_and_says_how(tunnel, tmp_path):
    from test_doctor import doctor

    squid = Squid(("digest",), USERS, ssl_ports=(tunnel.server.port,))
    try:
        good = agent_config(
            tunnel.certs, tunnel.server.port, upstream_proxy=f"http://alice:s3cret%20pass@127.0.0.1:{squid.port}"
        )
        code, out = doctor(good, tmp_path, "good.yaml")
        assert (
            "ok    upstream proxy" in out and "(from upstream_proxy)" in out and "authenticated with Digest" in out
        ), out
        bad = agent_config(tunnel.certs, tunnel.server.port, upstream_proxy=f"http://alice:nope@127.0.0.1:{squid.port}")
        code, out = doctor(bad, tmp_path, "bad.yaml")
        assert (
            code == 1
            and "FAIL  upstream proxy" in out
            and "refused the Digest credentials for alice" in out
            and "nope" not in out
        ), out
    finally:
        squid.stop()


def test_a_proxy_denied_credentials_gets_no_token_of_any_scheme():
    """Checked before any token is made: a Negotiate or NTLM token is already a credential
    (a Kerberos ticket, the start of an NTLM exchange), and the refusal names every scheme asked."""
    auth = ProxyAuthenticator("alice", "s3cret", "wpad-proxy", withheld="found in WPAD; allow it: X")
    offered = ["Negotiate", "NTLM", 'Digest realm="r", nonce="n"', "Basic realm=r"]
    with pytest.raises(ProxyAuthError) as refused:
        auth.answer(offered, "CONNECT", "server:443")
    assert str(refused.value) == (
        "the proxy asks for Negotiate, NTLM, Digest, Basic authentication and gets no credentials: "
        "found in WPAD; allow it: X"
    )
    assert auth.scheme is None and auth._context is None and "s3cret" not in str(refused.value)
