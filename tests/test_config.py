"""Config loading: defaults, YAML, command-line overrides, and one-line errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel.config import AGENT_KEYS, SERVER_KEYS, ConfigError, load, parse_duration, read_pem


def write(tmp_path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_match_the_seed(tmp_path):
    server = load(SERVER_KEYS, None)
    assert (server.port, server.metrics.namespace, server.metrics.service_name, server.metrics.metrics_interval) == (
        443,
        "Fluidity",
        "fluidity-server",
        60.0,
    )
    agent = load(AGENT_KEYS, None)
    assert (agent.proxy_host, agent.proxy_port, agent.server_port, agent.lifecycle.wake_timeout) == (
        ("127.0.0.1", "::1"),
        8080,
        443,
        90.0,
    )


def test_yaml_then_overrides(tmp_path):
    path = write(tmp_path, "port: 9443\nmetrics:\n  metrics_interval: 5m\n  emit_metrics: true\n")
    config = load(SERVER_KEYS, path, {"port": "10443"})
    assert config.port == 10443
    assert config.metrics.metrics_interval == 300.0
    assert config.metrics.emit_metrics is True


@pytest.mark.parametrize(
    "text, message",
    [
        ("prot: 1\n", "unknown key 'prot' (did you mean 'port'?)"),
        ("port: eighty\n", "'port': expected a whole number"),
        ("port: 70000\n", "'port': must be between 0 and 65535"),
        ("dial_timeout: soon\n", "'dial_timeout': expected a duration"),
        ("metrics: 5\n", "'metrics' must be a mapping"),
        ("metrics:\n  colour: red\n", "unknown key 'metrics.colour'"),
        ("- a\n- b\n", "expected a mapping of keys"),
        ("port: [1\n", "not valid YAML at line 2"),
        ("log_level: chatty\n", "'log_level': expected one of"),
        ("egress_allow: 5\n", "'egress_allow': expected a list"),
    ],
)
def test_errors_name_the_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load(SERVER_KEYS, path)
    assert message in str(e.value)
    assert str(e.value).startswith(path)
    assert "\n" not in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load(SERVER_KEYS, str(tmp_path / "absent.yaml"))


def test_bad_override_names_the_flag():
    with pytest.raises(ConfigError, match=r"'proxy_port' \(--proxy-port\)"):
        load(AGENT_KEYS, None, {"proxy_port": "http"})


@pytest.mark.parametrize(
    "text, seconds", [("60s", 60), ("5m", 300), ("1h", 3600), ("250ms", 0.25), (12, 12), ("1.5", 1.5)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@given(st.text(max_size=20))
def test_duration_parser_never_crashes_unexpectedly(text):
    try:
        assert parse_duration(text) >= 0
    except ValueError:
        pass


def test_pem_from_env(monkeypatch):
    monkeypatch.setenv("SOME_PEM", "-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n")
    assert read_pem("env:SOME_PEM", "cert_file").startswith(b"-----BEGIN")
    monkeypatch.delenv("SOME_PEM")
    with pytest.raises(ConfigError, match="SOME_PEM is not set"):
        read_pem("env:SOME_PEM", "cert_file")


# -- config where users look for it, and the seed's layout (issue 18, item 2) ------------------


def test_the_seeds_server_yaml_loads_as_written(tmp_path):
    from tunnel import config as cfg

    path = tmp_path / "server.yaml"
    path.write_text(
        "server:\n  host: 127.0.0.1\n  port: 9443\nmetrics:\n  emit_metrics: true\n  metrics_interval: 60s\n  "
        "namespace: Fluidity\n  service_name: fluidity-server\n"
    )
    loaded = cfg.load(cfg.SERVER_KEYS, str(path))
    assert (loaded.host, loaded.port, loaded.metrics.emit_metrics) == ("127.0.0.1", 9443, True)


def test_the_seeds_agent_yaml_loads_as_written(tmp_path):
    from tunnel import config as cfg

    path = tmp_path / "agent.yaml"
    path.write_text(
        "agent:\n  proxy_port: 8080\n  server_ip: 203.0.113.7\n  server_port: 8443\nlifecycle:\n  wake_endpoint: "
        "https://x.example/wake\n  api_key: k\n  wake_timeout: 90s\n  wake_retry_interval: 5s\n"
    )
    loaded = cfg.load(cfg.AGENT_KEYS, str(path))
    assert (loaded.proxy_port, loaded.server_ip, loaded.lifecycle.wake_timeout) == (8080, "203.0.113.7", 90.0)


def test_a_key_both_in_and_out_of_the_section_is_one_line(tmp_path):
    from tunnel import config as cfg

    path = tmp_path / "agent.yaml"
    path.write_text("proxy_port: 8081\nagent:\n  proxy_port: 8080\n")
    with pytest.raises(cfg.ConfigError) as raised:
        cfg.load(cfg.AGENT_KEYS, str(path))
    assert "'proxy_port' is given both at the top level and under 'agent:'" in str(raised.value)


def test_relative_certificate_paths_are_relative_to_the_config_file(tmp_path):
    from tunnel import config as cfg

    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "agent.yaml"
    path.write_text("server_ip: 127.0.0.1\ncert_file: certs/me.pem\nkey_file: /abs/me.key\nca_file: env:CA\n")
    loaded = cfg.load(cfg.AGENT_KEYS, str(path))
    assert loaded.cert_file == str(tmp_path / "conf" / "certs" / "me.pem")
    assert loaded.key_file == "/abs/me.key" and loaded.ca_file == "env:CA"


@pytest.mark.processes
def test_the_agent_finds_its_config_in_the_users_config_folder(certs, tmp_path):
    """No --config: $FLUIDITY_CONFIG, else ~/.config/fluidity/agent.yaml, with certificates
    next to it, whatever the working directory."""
    import os
    import subprocess

    import yaml
    from support import TWISTD, Proc, free_port, server_config, start_twistd, user_home, wait_connected, wait_for_port

    home = user_home(certs, tmp_path)
    folder = home / ".config" / "fluidity"
    server = start_twistd("server", server_config(certs), tmp_path)
    proxy_port = free_port()
    (folder / "agent.yaml").write_text(
        yaml.safe_dump(
            {
                "agent": {"proxy_port": proxy_port, "server_ip": "127.0.0.1", "server_port": server.port},
                "cert_file": "certs/client.pem",
                "key_file": "certs/client.key",
                "ca_file": "certs/ca.pem",
                "log_level": "debug",
            }
        )
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("FLUIDITY_CONFIG", "XDG_CONFIG_HOME")}
    env["HOME"] = str(home)
    log = tmp_path / "agent.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "fluidity-agent"], cwd=elsewhere, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    agent = Proc("agent", process, log, proxy_port)
    try:
        wait_for_port(proxy_port, process=process)
        assert wait_connected(agent)["connected"]
    finally:
        agent.stop()
        server.stop()


def test_settings_are_typed_frozen_and_hold_every_key_of_the_schema(tmp_path):
    import dataclasses

    from tunnel.config import AgentSettings, ServerSettings

    server = load(SERVER_KEYS, write(tmp_path, "egress_allow: [127.0.0.0/8]\n"))
    assert isinstance(server, ServerSettings) and server.egress_allow == ("127.0.0.0/8",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        server.port = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        server.metrics.namespace = "x"
    agent = load(AGENT_KEYS, None)
    assert isinstance(agent, AgentSettings) and agent.lifecycle.wake_timeout == 90.0 and agent.source == "defaults"


def test_the_server_keeps_what_it_builds_out_of_its_settings(certs, tmp_path):
    """The egress policy and the revocation list are objects of the running server, not settings."""
    import yaml

    from tunnel.taps_server import Options as ServerOptions

    path = tmp_path / "server.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "cert_file": certs.path("server.pem"),
                "key_file": certs.path("server.key"),
                "ca_file": certs.path("ca.pem"),
                "egress_allow": ["127.0.0.0/8"],
            }
        )
    )
    options = ServerOptions()
    options.parseOptions(["--config", str(path)])
    assert options.egress_policy.allow and options.revocations is not None
    assert not hasattr(options.config, "egress_policy") and not hasattr(options.config, "revocations")
