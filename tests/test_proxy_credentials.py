"""The proxy's credentials kept out of the proxy URL (issue 25, item 3: "explicit
credentials (config, environment, or a keyring)"): `upstream_proxy_user` with
`upstream_proxy_password: env:VAR` or `keyring`, against a real squid asking for Basic and
NTLM. The keyring is the keyring package with keyrings.alt's file backend (no desktop
Secret Service on this machine), written by `fluidity proxy-password` itself."""

from __future__ import annotations

import subprocess

import pytest
from squid import Squid
from support import FLUIDITY, TWISTD, agent_config, served_by_a_new_agent

from tunnel.agent.proxy_credentials import CredentialsError, ProxyCredentials, credentials_from
from tunnel.agent.upstream import UpstreamProxy

USERS = {"corp": "pw with spaces & symbols"}


@pytest.fixture
def keyring_env(tmp_path) -> dict:
    """A keyring of the test's own: keyrings.alt's plaintext file under this test's folder."""
    return {"PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring", "XDG_DATA_HOME": str(tmp_path / "data")}


def store(user: str, password: str, env: dict) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [FLUIDITY, "proxy-password", "--user", user, "--stdin"],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def tunnelled_as(squid: Squid, port: int) -> list[str]:
    lines = [
        line.split()
        for line in squid.access_log().splitlines()
        if f"CONNECT 127.0.0.1:{port}" in line and "TCP_TUNNEL/200" in line
    ]
    return [fields[7] for fields in lines]


@pytest.mark.parametrize("schemes", [("basic",), ("ntlm",)])
def test_a_password_from_the_environment(tunnel, http_origin, tmp_path, schemes, monkeypatch):
    squid = Squid(schemes, USERS, ssl_ports=(tunnel.server.port,))
    try:
        monkeypatch.setenv("CORP_PROXY_PW", USERS["corp"])
        config = agent_config(
            tunnel.certs,
            tunnel.server.port,
            upstream_proxy=f"http://127.0.0.1:{squid.port}",
            upstream_proxy_user="corp",
            upstream_proxy_password="env:CORP_PROXY_PW",
        )
        agent = served_by_a_new_agent(config, tmp_path, http_origin.port)
        assert (
            f"authenticated to the upstream proxy with {'NTLM' if schemes == ('ntlm',) else 'Basic'} as corp"
            in agent.log()
        )
        assert USERS["corp"] not in agent.log()
        users = tunnelled_as(squid, tunnel.server.port)
        assert users and (users[0] == "corp" if schemes == ("basic",) else users[0] != "-"), users
    finally:
        squid.stop()


def test_a_password_from_the_keyring_stored_by_fluidity_proxy_password(tunnel, http_origin, tmp_path, keyring_env):
    stored = store("corp", USERS["corp"], keyring_env)
    assert stored.returncode == 0 and "stored the proxy password of corp" in stored.stdout, stored
    assert USERS["corp"] not in stored.stdout + stored.stderr
    squid = Squid(("basic",), USERS, ssl_ports=(tunnel.server.port,))
    try:
        # The user is in the URL here; the password only in the keyring.
        config = agent_config(
            tunnel.certs,
            tunnel.server.port,
            upstream_proxy=f"http://corp@127.0.0.1:{squid.port}",
            upstream_proxy_password="keyring",
        )
        agent = served_by_a_new_agent(config, tmp_path, http_origin.port, env=keyring_env)
        assert "authenticated to the upstream proxy with Basic as corp" in agent.log()
        assert USERS["corp"] not in agent.log()
        assert tunnelled_as(squid, tunnel.server.port)[:1] == ["corp"]
    finally:
        squid.stop()
    import os

    removed = subprocess.run(
        [FLUIDITY, "proxy-password", "--user", "corp", "--delete"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **keyring_env},
    )
    assert removed.returncode == 0 and "removed the proxy password of corp" in removed.stdout, removed
    again = subprocess.run(
        [FLUIDITY, "proxy-password", "--user", "corp", "--delete"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **keyring_env},
    )
    assert again.returncode == 0 and "no proxy password was stored for corp" in again.stdout, again


@pytest.mark.processes
@pytest.mark.parametrize(
    "settings, env, message",
    [
        (
            {"upstream_proxy_user": "corp", "upstream_proxy_password": "keyring"},
            {},
            "no password for corp in the system's credential store; store one with: fluidity proxy-password --user "
            "'corp'",
        ),
        (
            {"upstream_proxy_user": "corp", "upstream_proxy_password": "env:NOT_SET_HERE"},
            {},
            "'upstream_proxy_password': environment variable NOT_SET_HERE is not set or empty",
        ),
        (
            {"upstream_proxy_password": "env:HOME"},
            {},
            "'upstream_proxy_password' needs a user name: set 'upstream_proxy_user'",
        ),
        (
            {"upstream_proxy_user": "corp", "upstream_proxy_password": "keyring"},
            {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"},
            "the system's credential store did not answer",
        ),
    ],
)
def test_a_password_that_cannot_be_had_is_one_line_at_start(certs, tmp_path, keyring_env, settings, env, message):
    import os

    config = agent_config(certs, 1, upstream_proxy="http://127.0.0.1:3128", **settings)
    path = tmp_path / "agent.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config))
    run_env = {k: v for k, v in os.environ.items() if k != "NOT_SET_HERE"}
    done = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "fluidity-agent", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**run_env, **keyring_env, **env},
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0 and message in output and "Traceback" not in output, output


@pytest.mark.processes
def test_proxy_password_refuses_an_empty_password(tmp_path, keyring_env):
    done = store("corp", "", keyring_env)
    assert done.returncode == 1 and "an empty password; nothing stored" in done.stderr, done


def test_the_urls_own_credentials_win_and_others_are_filled_in():
    given = ProxyCredentials("corp", "pw")
    assert given.apply(UpstreamProxy("proxy", 3128)) == UpstreamProxy("proxy", 3128, "corp", "pw")
    assert given.apply(UpstreamProxy("proxy", 3128, "corp")) == UpstreamProxy("proxy", 3128, "corp", "pw")
    assert given.apply(UpstreamProxy("proxy", 3128, "bob", "bobs")) == UpstreamProxy("proxy", 3128, "bob", "bobs")
    assert given.apply(UpstreamProxy("proxy", 3128, "bob")) == UpstreamProxy(
        "proxy", 3128, "bob"
    )  # not corp's password for bob
    assert given.apply(None) is None
    assert credentials_from("", "", "http://u@p:1") == ProxyCredentials()
    assert credentials_from("", "literal", "http://CORP%5Calice@p:1") == ProxyCredentials("CORP\\alice", "literal")
    with pytest.raises(CredentialsError):
        credentials_from("", "env:X", "auto", environ={})
