"""No private key, certificate body or API key in logs, errors or metrics."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from support import TWISTD, server_config

SECRET_MARKERS = ("-----BEGIN", "PRIVATE KEY")


def assert_clean(text: str, *secrets: str) -> None:
    for marker in SECRET_MARKERS + secrets:
        assert marker not in text, f"{marker!r} leaked:\n{text[-2000:]}"


def test_debug_logs_of_a_busy_pair_hold_no_key_material(tunnel, http_origin):
    from support import curl

    curl("-x", tunnel.proxy, f"http://127.0.0.1:{http_origin.port}/secret-check")  # some traffic first
    for proc in (tunnel.server, tunnel.agent):
        text = proc.log()
        assert "debug" in text.lower() or "#debug" in text  # the most talkative level was on
        assert_clean(text, Path(tunnel.certs.path("client.key")).read_text().splitlines()[1])


@pytest.mark.processes
def test_a_broken_pem_is_named_but_never_echoed(certs, tmp_path):
    body = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg" + "S3CR3T" * 8
    env = {**os.environ, "FLUIDITY_SERVER_KEY": f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n"}
    config = server_config(certs, key_file="env:FLUIDITY_SERVER_KEY")
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "fluidity-server", "--config", str(path)],
        capture_output=True,
        timeout=30,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode != 0
    message = done.stderr.decode()
    assert "FLUIDITY_SERVER_KEY" in message and "S3CR3T" not in message and "Traceback" not in message
    assert len(message.strip().splitlines()) == 1


def test_metrics_carry_names_and_numbers_only():
    from tunnel.server.metrics import metric_data

    data = metric_data("fluidity-server", 2, 1_700_000_000.9, 1_700_000_100.0, {"alice": 1, "client": 1})
    text = repr(data)
    assert_clean(text)
    assert {d["MetricName"] for d in data} == {"ActiveConnections", "LastActivityEpochSeconds", "BytesSentToAgents"}
    assert all(isinstance(d["Value"], float) for d in data)
    assert sorted(dim["Value"] for d in data for dim in d["Dimensions"] if dim["Name"] == "Agent") == [
        "alice",
        "client",
    ]


# -- a proxy URL's password, in every message that quotes the URL (issue 39, item 3) --

PASSWORD = "Pw-0f-the-proxy"
BAD_PROXY_URLS = [
    f"http://fluid:{PASSWORD}@proxy.example:99999",  # a bad port
    f"http://fluid:{PASSWORD}@[proxy.example:3128",  # a host that does not parse
    f"http://fluid:{PASSWORD[:4]}/{PASSWORD[4:]}@proxy.example:3128",  # an unencoded / in the password
]


def twistd_agent(certs, tmp_path, env: dict, **settings) -> subprocess.CompletedProcess:
    from support import agent_config, env_without_proxies

    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(agent_config(certs, 8443, **settings)))
    return subprocess.run(
        [TWISTD, "-n", "--pidfile=", "fluidity-agent", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={**env_without_proxies(), **env},
    )


def password_parts() -> tuple[str, str]:
    return PASSWORD[:4], PASSWORD[4:]  # neither half may show, whichever way a URL splits


def assert_no_password(text: str) -> None:
    for part in password_parts():
        assert part not in text, f"the proxy password leaked:\n{text[-3000:]}"


@pytest.mark.processes
@pytest.mark.parametrize("url", BAD_PROXY_URLS)
@pytest.mark.parametrize("given_as", ["config", "$HTTPS_PROXY"])
def test_a_bad_proxy_url_is_named_in_twistds_error_without_its_password(certs, tmp_path, url, given_as):
    settings = {"upstream_proxy": url} if given_as == "config" else {}
    env = {"HTTPS_PROXY": url} if given_as == "$HTTPS_PROXY" else {}
    done = twistd_agent(certs, tmp_path, env, **settings)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done
    assert "fluid:***@" in done.stderr and ("proxy" in done.stderr), done.stderr
    assert_no_password(done.stdout + done.stderr)


@pytest.mark.processes
@pytest.mark.parametrize("url", BAD_PROXY_URLS)
@pytest.mark.parametrize("given_as", ["config", "$HTTPS_PROXY"])
def test_doctor_names_a_bad_proxy_url_without_its_password(certs, tmp_path, url, given_as):
    from support import agent_config
    from test_doctor import doctor

    settings = {"upstream_proxy": url} if given_as == "config" else {}
    code, out = doctor(
        agent_config(certs, 8443, **settings), tmp_path, env={"HTTPS_PROXY": url} if given_as != "config" else {}
    )
    assert code != 0 and "FAIL  upstream proxy:" in out and "fluid:***@" in out, out
    assert_no_password(out)


@pytest.mark.processes
def test_a_bad_proxy_from_the_environment_under_auto_shows_on_the_page_and_in_the_log_without_its_password(
    certs, tmp_path
):
    """`upstream_proxy: auto` and no PAC file: the agent falls back to $HTTPS_PROXY while it
    runs. A URL there that does not parse is the tunnel's error on the status page, in
    /status.json, `fluidity agent status` and the log, never a traceback, and never with
    its password."""
    import urllib.request

    from support import FLUIDITY, agent_config, start_twistd, wait_until

    config = agent_config(certs, 8443, upstream_proxy="auto", pac_url=str(tmp_path / "no-such.pac"))
    agent = start_twistd("agent", config, tmp_path, env={"HTTPS_PROXY": BAD_PROXY_URLS[0]})
    try:

        def page(path: str) -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{agent.port}{path}", timeout=5) as answer:
                return answer.read().decode()

        wait_until(lambda: "bad proxy port" in page("/status.json"), 15, interval=0.3)
        shown = page("/") + page("/status.json") + page("/health")
        assert "bad proxy port in &#x27;http://fluid:***@proxy.example:99999" in shown, shown
        said = subprocess.run(
            [FLUIDITY, "agent", "status", "--port", str(agent.port)], capture_output=True, text=True, timeout=30
        )
        assert "bad proxy port" in said.stdout, said
    finally:
        agent.stop()
    assert_no_password(shown + said.stdout + said.stderr + agent.log())
    agent.assert_no_unhandled_errors()


def test_reprs_of_what_holds_a_proxy_password_or_an_api_key_do_not_show_it():
    from tunnel.agent.lifecycle import LifecycleSettings
    from tunnel.agent.proxy_credentials import ProxyCredentials
    from tunnel.agent.upstream import parse_proxy_url

    held = [
        parse_proxy_url(f"http://fluid:{PASSWORD}@proxy.example:3128"),
        ProxyCredentials("fluid", PASSWORD),
        LifecycleSettings(
            "https://a/wake", "https://a/status", "", PASSWORD, 90, 5, 10, False, f"http://u:{PASSWORD}@p"
        ),
    ]
    for value in held:
        assert_no_password(repr(value))


def test_log_lines_and_tracebacks_never_carry_a_urls_password():
    """The log observers redact whatever a message or an exception quotes, text and JSON."""
    import io
    import json

    from twisted.logger import Logger, globalLogPublisher
    from twisted.python.failure import Failure

    from tunnel.wire.logs import JsonLineObserver, text_observer

    text, lines = io.StringIO(), io.StringIO()
    observers = [text_observer(text), JsonLineObserver(lines)]
    for observer in observers:
        globalLogPublisher.addObserver(observer)
    try:
        log = Logger(namespace="test")
        log.info("via {url}", url=BAD_PROXY_URLS[0])
        try:
            raise ValueError(f"bad proxy port in {BAD_PROXY_URLS[2]!r}")
        except ValueError:
            log.failure("it broke", Failure())
    finally:
        for observer in observers:
            globalLogPublisher.removeObserver(observer)
    out = text.getvalue() + lines.getvalue()
    assert "fluid:***@proxy.example:99999" in out and "ValueError" in out, out
    assert all(json.loads(line)["message"] for line in lines.getvalue().splitlines())
    assert_no_password(out)
