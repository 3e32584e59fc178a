"""Faults the tunnel must ride out: a black-holed path, agent and server restarts, a
control plane that goes away. (SIGKILL, SIGSTOP and drain are in test_resilience.)"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from support import agent_config, curl, server_config, start_twistd, wait_connected, wait_until
from test_resilience import health

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)

FAST = {"keepalive_interval": "0.5s", "keepalive_timeout": "1s", "reconnect_max_delay": "0.5s", "tunnel_wait": "2s"}


class PathRelay:
    """A TCP relay standing for the network between agent and server; `black_hole()`
    keeps every connection open but lets no byte through, as a dead route does."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.passing = threading.Event()
        self.passing.set()
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if self.passing.is_set():
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def black_hole(self) -> None:
        self.passing.clear()

    def restore(self) -> None:
        self.passing.set()

    def close(self) -> None:
        self.stopped = True
        self.listener.close()


def test_black_holed_path_is_detected_by_ping_and_recovered(certs, tmp_path, http_origin):
    server = start_twistd("server", server_config(certs), tmp_path)
    relay = PathRelay(server.port)
    agent = start_twistd("agent", agent_config(certs, relay.port, **FAST), tmp_path)
    try:
        wait_connected(agent)
        relay.black_hole()
        started = time.monotonic()
        wait_until(lambda: not health(agent)["connected"], 6)
        assert time.monotonic() - started < 3.5  # keepalive interval 0.5 s + timeout 1 s, with slack
        answer = curl(
            "-x",
            f"http://127.0.0.1:{agent.port}",
            "-w",
            "%{http_code}",
            f"http://127.0.0.1:{http_origin.port}/x",
            timeout=10,
        )
        assert answer.stdout.endswith(b"503")  # told, not hung
        relay.restore()
        wait_connected(agent, 10)
        ok = curl("-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/back")
        assert b"hello from http-origin /back" in ok.stdout
    finally:
        relay.close()
        assert agent.stop() == 0
        assert server.stop() == 0
    for proc in (agent, server):
        proc.assert_no_unhandled_errors()


def test_agent_restarted_while_the_server_runs(certs, tmp_path, http_origin):
    server = start_twistd("server", server_config(certs), tmp_path)
    config = agent_config(certs, server.port, **FAST)
    try:
        for round_ in range(3):
            agent = start_twistd("agent", config, tmp_path, name=f"agent-{round_}")
            wait_connected(agent)
            ok = curl("-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/round{round_}")
            assert f"/round{round_}".encode() in ok.stdout
            assert agent.stop() == 0
            agent.assert_no_unhandled_errors()
        wait_until(lambda: server.log().count("disconnected") == 3, 5)
        assert server.log().count("connected (h2)") == 3
    finally:
        assert server.stop() == 0
    server.assert_no_unhandled_errors()


def test_server_restarted_with_agents_connected(certs, tmp_path, http_origin):
    config = server_config(certs, drain_timeout="2s")
    server = start_twistd("server", config, tmp_path)
    agents = [
        start_twistd("agent", agent_config(certs, server.port, **FAST), tmp_path, name=f"agent-{n}") for n in range(2)
    ]
    try:
        for agent in agents:
            wait_connected(agent)
        assert server.stop() == 0  # graceful: drains, then exits 0
        for agent in agents:
            wait_until(lambda agent=agent: not health(agent)["connected"], 5)
        server = start_twistd("server", config, tmp_path, name="server-again")
        for agent in agents:
            wait_connected(agent, 5)
            ok = curl("-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/again")
            assert b"/again" in ok.stdout
    finally:
        for agent in agents:
            assert agent.stop() == 0
            agent.assert_no_unhandled_errors()
        assert server.stop() == 0
