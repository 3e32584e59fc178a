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
    assert (server["port"], server["metrics.namespace"], server["metrics.service_name"], server["metrics.metrics_interval"]) == (8443, "Fluidity", "fluidity-server", 60.0)
    agent = load(AGENT_KEYS, None)
    assert (agent["proxy_host"], agent["proxy_port"], agent["server_port"], agent["lifecycle.wake_timeout"]) == ("127.0.0.1", 8080, 8443, 90.0)


def test_yaml_then_overrides(tmp_path):
    path = write(tmp_path, "port: 9443\nmetrics:\n  metrics_interval: 5m\n  emit_metrics: true\n")
    config = load(SERVER_KEYS, path, {"port": "10443"})
    assert config["port"] == 10443
    assert config["metrics.metrics_interval"] == 300.0
    assert config["metrics.emit_metrics"] is True


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


@pytest.mark.parametrize("text, seconds", [("60s", 60), ("5m", 300), ("1h", 3600), ("250ms", 0.25), (12, 12), ("1.5", 1.5)])
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
