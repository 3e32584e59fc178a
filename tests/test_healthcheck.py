"""The container's health check: a TLS handshake with the server's listener."""

from __future__ import annotations

import socket

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
