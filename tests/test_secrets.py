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
    assert {d["MetricName"] for d in data} == {"ActiveConnections", "LastActivityEpochSeconds"}
    assert all(isinstance(d["Value"], float) for d in data)
    assert sorted(dim["Value"] for d in data for dim in d["Dimensions"] if dim["Name"] == "Agent") == [
        "alice",
        "client",
    ]
