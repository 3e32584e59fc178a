"""The container's health check: a TLS handshake with the server's listener."""

from __future__ import annotations

import socket

import pytest
from support import free_port

from tunnel.server.healthcheck import main, probe


def test_a_running_server_is_healthy(tunnel):
    assert probe(tunnel.server.port) is None
    assert main(["healthcheck", str(tunnel.server.port)]) == 0


def test_nothing_listening_or_not_tls_is_unhealthy(echo):
    assert "127.0.0.1" in probe(free_port())
    assert main(["healthcheck", str(free_port())]) == 1
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        assert probe(silent.getsockname()[1], timeout=0.5) is not None  # accepts, never speaks TLS
    finally:
        silent.close()
    assert probe(echo.port, timeout=1) is not None  # speaks, but not TLS


@pytest.mark.processes
def test_a_server_bound_to_one_address_is_probed_there(certs, tmp_path, monkeypatch):
    """FLUIDITY_HOST: a server told to bind one address (each task its own, as in the
    rehearsal of several tasks) is healthy there, and the probe does not look elsewhere."""
    from support import server_config, start_twistd, wait_until

    server = start_twistd("server", server_config(certs, host="127.0.0.2"), tmp_path, wait=False)
    try:
        monkeypatch.setenv("FLUIDITY_HOST", "127.0.0.2")
        wait_until(lambda: probe(server.port, "127.0.0.2") is None, 15)
        assert main(["healthcheck", str(server.port)]) == 0
        monkeypatch.setenv("FLUIDITY_HOST", "0.0.0.0")  # every address: 127.0.0.1, where nothing listens
        assert main(["healthcheck", str(server.port)]) == 1
        monkeypatch.delenv("FLUIDITY_HOST")
        assert main(["healthcheck", str(server.port)]) == 1
    finally:
        server.stop()
