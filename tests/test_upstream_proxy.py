"""The agent reaches the server through a corporate HTTP proxy (a real tinyproxy on
loopback, with Basic authentication), mTLS unchanged inside the CONNECT."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from support import (
    agent_config,
    curl,
    free_port,
    served_by_a_new_agent,
    start_twistd,
    wait_connected,
    wait_for_port,
    wait_until,
)

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)

USER, PASSWORD = "fluid", "s3cret-pass"


@pytest.fixture(scope="module")
def tinyproxy(tmp_path_factory):
    binary = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
    assert shutil.which(binary), "tinyproxy is needed (apt-get install tinyproxy; .ci/run installs it)"
    workdir = tmp_path_factory.mktemp("tinyproxy")
    port = free_port()
    log = workdir / "tinyproxy.log"
    config = workdir / "tinyproxy.conf"
    # In the foreground without a LogFile, tinyproxy logs to stdout: CONNECT lines included.
    config.write_text(
        f"Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 64\nAllow 127.0.0.1\nBasicAuth {USER} {PASSWORD}\n"
        f"LogLevel Connect\n"
    )
    with open(log, "wb") as out:
        process = subprocess.Popen([binary, "-d", "-c", str(config)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process=process)
        yield port, log
    finally:
        process.terminate()
        process.wait(10)


def test_agent_tunnels_through_the_proxy_with_basic_auth(tunnel, tinyproxy, http_origin, tmp_path):
    port, log = tinyproxy
    config = agent_config(tunnel.certs, tunnel.server.port, upstream_proxy=f"http://{USER}:{PASSWORD}@127.0.0.1:{port}")
    agent = start_twistd("agent", config, tmp_path)
    try:
        wait_connected(agent)
        result = curl("-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/plain")
        assert result.returncode == 0 and b"http-origin" in result.stdout, result.stderr
        assert wait_until(lambda: f"127.0.0.1:{tunnel.server.port}" in log.read_text(), 5)  # it went through the proxy
    finally:
        assert agent.stop() == 0
    text = agent.log()
    assert f"via http://{USER}@127.0.0.1:{port}" in text and PASSWORD not in text
    agent.assert_no_unhandled_errors()


def test_a_wrong_password_is_a_clear_503(tunnel, tinyproxy, http_origin, tmp_path):
    port, _ = tinyproxy
    config = agent_config(tunnel.certs, tunnel.server.port, upstream_proxy=f"http://{USER}:wrong@127.0.0.1:{port}")
    agent = start_twistd("agent", config, tmp_path)
    try:
        result = curl(
            "-i", "-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/plain", timeout=20
        )
        head = result.stdout.decode(errors="replace")
        assert (
            head.startswith("HTTP/1.1 503")
            and "upstream proxy refused CONNECT" in head
            and ("407" in head or "401 Unauthorized" in head)
        ), head  # tinyproxy says 401
    finally:
        assert agent.stop() == 0
    agent.assert_no_unhandled_errors()


def test_https_proxy_from_the_environment_and_no_proxy(tunnel, tinyproxy, http_origin, tmp_path):
    port, log = tinyproxy
    before = log.read_text().count(f"127.0.0.1:{tunnel.server.port}")
    env = {"HTTPS_PROXY": f"http://{USER}:{PASSWORD}@127.0.0.1:{port}"}
    agent = start_twistd("agent", agent_config(tunnel.certs, tunnel.server.port), tmp_path, name="agent-env", env=env)
    try:
        wait_connected(agent)
        assert "via http://fluid@127.0.0.1" in agent.log()
    finally:
        assert agent.stop() == 0
    assert log.read_text().count(f"127.0.0.1:{tunnel.server.port}") > before
    bypass = {**env, "NO_PROXY": "127.0.0.1"}
    agent = start_twistd(
        "agent", agent_config(tunnel.certs, tunnel.server.port), tmp_path, name="agent-no-proxy", env=bypass
    )
    try:
        wait_connected(agent)
        assert " via " not in agent.log()
    finally:
        assert agent.stop() == 0


@pytest.mark.parametrize(
    "url, message",
    [
        ("socks5://proxy:1080", "only http:// and https:// upstream proxies"),
        ("http://proxy:99999", "bad proxy port"),
        ("http://proxy:3128/path", "no path"),
        ("http://[proxy:3128", "bad proxy URL"),
    ],
)
def test_bad_proxy_urls_are_one_line(certs, tmp_path, url, message):
    import yaml

    from tunnel.taps_agent import Options as AgentOptions

    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(agent_config(certs, 8443, upstream_proxy=url)))
    with pytest.raises(SystemExit, match=message):
        AgentOptions().parseOptions(["--config", str(path)])


def test_doctor_checks_the_upstream_proxy(tunnel, tinyproxy, tmp_path):
    """`fluidity doctor` tries CONNECT to the server through the proxy, with its credentials."""
    import os

    import yaml
    from support import FLUIDITY

    port, _ = tinyproxy
    for n, (password, expected) in enumerate(((PASSWORD, "ok    upstream proxy"), ("wrong", "FAIL  upstream proxy"))):
        path = tmp_path / f"agent-{n}.yaml"
        path.write_text(
            yaml.safe_dump(
                agent_config(
                    tunnel.certs, tunnel.server.port, upstream_proxy=f"http://{USER}:{password}@127.0.0.1:{port}"
                )
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        done = subprocess.run(
            [FLUIDITY, "doctor", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, "HOME": str(tmp_path)},
        )
        line = next(line for line in done.stdout.splitlines() if "  upstream proxy:" in line)
        assert line.startswith(expected) and PASSWORD not in done.stdout, done.stdout


def test_an_https_proxy_takes_tls_then_connect_inside_it(tunnel, http_origin, tmp_path):
    """`upstream_proxy: https://...`: TLS to the proxy (its certificate checked against
    upstream_proxy_ca), then CONNECT, then the tunnel's own mutual TLS inside: a real squid
    listening with `https_port`."""
    from squid import Squid

    from tunnel.wire import pki

    proxy_pki = tmp_path / "proxy-pki"
    pki.init(proxy_pki)  # a corporate CA of its own; its server certificate names 127.0.0.1
    squid = Squid((), {}, ssl_ports=(tunnel.server.port,), tls=(proxy_pki / "server.pem", proxy_pki / "server.key"))
    try:
        config = agent_config(
            tunnel.certs,
            tunnel.server.port,
            upstream_proxy=f"https://127.0.0.1:{squid.port}",
            upstream_proxy_ca=str(proxy_pki / "ca.pem"),
        )
        agent = served_by_a_new_agent(config, tmp_path, http_origin.port, name="agent-https-proxy")
        assert f"CONNECT 127.0.0.1:{tunnel.server.port}" in squid.access_log(), squid.access_log()
        assert f"via https://127.0.0.1:{squid.port}" in agent.log()

        # Without the proxy's CA the agent refuses the proxy's certificate, and says so.
        config = agent_config(
            tunnel.certs, tunnel.server.port, upstream_proxy=f"https://127.0.0.1:{squid.port}", tunnel_wait="1s"
        )
        agent = start_twistd("agent", config, tmp_path, name="agent-https-proxy-untrusted")
        try:
            wait_until(
                lambda: (
                    b"TLS to the upstream proxy https://127.0.0.1"
                    in curl(
                        "-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/plain", timeout=10
                    ).stdout
                ),
                20,
            )
            assert "certificate verify failed; set upstream_proxy_ca" in agent.log(), agent.log()[-2000:]
        finally:
            agent.stop()
    finally:
        squid.stop()
