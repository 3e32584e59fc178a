"""The tunnel's own lifecycle: reconnect with backoff, PING keepalive, graceful drain,
503 while down, a server name the agent does not expect, and max_connections."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.request

import pytest
from support import agent_config, curl, proxy_connect, server_config, start_twistd, wait_connected, wait_until

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)


def health(agent) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.port}/health", timeout=5) as r:
        return json.load(r)


@pytest.fixture
def pair(certs, tmp_path):
    """A private server + agent with fast keepalive and reconnect, for tests that break things."""
    server = start_twistd("server", server_config(certs, keepalive_interval="1s", keepalive_timeout="1s"), tmp_path)
    agent = start_twistd(
        "agent",
        agent_config(
            certs,
            server.port,
            keepalive_interval="0.5s",
            keepalive_timeout="1s",
            reconnect_max_delay="0.5s",
            tunnel_wait="1s",
        ),
        tmp_path,
    )
    wait_connected(agent)
    procs = {"server": server, "agent": agent, "dir": tmp_path}
    yield procs
    for p in (procs["agent"], procs["server"]):
        if p.process.poll() is None:
            p.process.send_signal(signal.SIGCONT)
            p.stop()
        p.assert_no_unhandled_errors()


def test_server_killed_mid_transfer_then_back(pair, certs, echo, http_origin):
    server, agent = pair["server"], pair["agent"]
    sock, head = proxy_connect(agent.port, f"127.0.0.1:{echo.port}")
    assert head.startswith(b"HTTP/1.1 200")
    sock.sendall(b"before")
    assert sock.recv(6) == b"before"
    server.process.kill()
    server.process.wait(5)
    sock.settimeout(5)
    started = time.monotonic()
    with pytest.raises(ConnectionResetError):  # promptly, no hang, and never a clean EOF
        sock.recv(10)
    assert time.monotonic() - started < 3
    sock.close()
    wait_until(lambda: not health(agent)["connected"], 5)
    refused = curl(
        "-x",
        f"http://127.0.0.1:{agent.port}",
        "-w",
        "%{http_code}",
        f"http://127.0.0.1:{http_origin.port}/down",
        timeout=10,
    )
    assert refused.stdout.endswith(b"503"), refused
    assert b"tunnel to 127.0.0.1" in refused.stdout
    back = start_twistd("server", server_config(certs, port=server.port), pair["dir"], name="server2")
    pair["server"] = back
    restarted = time.monotonic()
    wait_until(lambda: health(agent)["connected"], 5)
    assert time.monotonic() - restarted < 2.5
    ok = curl("-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/up", timeout=10)
    assert ok.stdout.startswith(b"hello from http-origin /up")


def test_frozen_server_detected_by_ping_timeout(pair):
    server, agent = pair["server"], pair["agent"]
    server.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        wait_until(lambda: not health(agent)["connected"], 6)
        assert time.monotonic() - started < 4  # interval 0.5s + timeout 1s, with slack
        assert "PING" in agent.log()
    finally:
        server.process.send_signal(signal.SIGCONT)
    wait_until(lambda: health(agent)["connected"], 10)


def test_graceful_stop_drains_open_streams(pair, echo):
    server, agent = pair["server"], pair["agent"]
    sock, head = proxy_connect(agent.port, f"127.0.0.1:{echo.port}")
    assert head.startswith(b"HTTP/1.1 200")
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert server.process.poll() is None  # still draining: the open stream holds it
    sock.sendall(b"during drain")
    sock.settimeout(5)
    assert sock.recv(64) == b"during drain"
    sock.shutdown(socket.SHUT_WR)
    assert sock.recv(64) == b""
    sock.close()
    assert server.process.wait(timeout=4) == 0  # exits once drained, well before drain_timeout


def test_agent_stop_is_clean(pair):
    assert pair["agent"].stop(timeout=10) == 0


def test_wrong_server_name_is_refused_and_reported(certs, tmp_path, http_origin, tunnel):
    agent = start_twistd(
        "agent",
        agent_config(certs, tunnel.server.port, server_name="not-fluidity", tunnel_wait="1s"),
        tmp_path,
        name="wrong-name",
    )
    try:
        answer = curl(
            "-x",
            f"http://127.0.0.1:{agent.port}",
            "-w",
            "%{http_code}",
            f"http://127.0.0.1:{http_origin.port}/",
            timeout=10,
        )
        assert answer.stdout.endswith(b"503"), answer
        assert not health(agent)["connected"]
        assert health(agent)["last_error"]
    finally:
        agent.stop()


def test_max_connections_enforced(certs, tmp_path):
    server = start_twistd("server", server_config(certs, max_connections=1), tmp_path)
    first = start_twistd("agent", agent_config(certs, server.port), tmp_path, name="first")
    second = start_twistd("agent", agent_config(certs, server.port, tunnel_wait="0.5s"), tmp_path, name="second")
    try:
        wait_connected(first)
        time.sleep(1.5)
        assert not health(second)["connected"]
        assert "max_connections (1) reached" in server.log()
        first.stop()
        wait_connected(second, 10)  # the freed slot goes to the waiting agent
    finally:
        for p in (second, first, server):
            p.stop()
