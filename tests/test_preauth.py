"""Connections that have not authenticated cannot lock agents out (issue 14, item 1).

Attacked the way a stranger on the internet would: bare TCP connects that never send a
byte, and TLS handshakes that stop after the ClientHello, from the agent's own address
and from another one, while a real agent (re)connects and the health check probes.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time

import pytest
from support import agent_config, server_config, start_twistd, wait_connected

from tunnel.server.healthcheck import probe
from tunnel.server.preauth import HandshakeBudget


class Flood:
    """Opens connections to `port` from `source` and keeps them, at most `count` of them
    and for at most `seconds`; `hello` sends a TLS ClientHello and then stalls."""

    def __init__(
        self, port: int, source: str, count: int, seconds: float, hello: bool = False, rate: float = 400.0
    ) -> None:
        self.port, self.source, self.count, self.seconds, self.hello, self.rate = (
            port,
            source,
            count,
            seconds,
            hello,
            rate,
        )
        self.sockets: list[socket.socket] = []
        self.opened = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._tls.check_hostname = False
        self._tls.verify_mode = ssl.CERT_NONE

    def __enter__(self) -> Flood:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)
        for s in self.sockets:
            s.close()

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while self.opened < self.count and time.monotonic() < deadline and not self.stop.is_set():
            try:
                s = socket.socket()
                s.bind((self.source, 0))
                s.connect(("127.0.0.1", self.port))
                if self.hello:
                    s.setblocking(False)
                    s = self._tls.wrap_socket(s, do_handshake_on_connect=False)
                    try:
                        s.do_handshake()  # sends the ClientHello, then would wait for the server
                    except ssl.SSLWantReadError:
                        pass
            except OSError:
                time.sleep(0.01)
                continue
            self.sockets.append(s)
            self.opened += 1
            time.sleep(1.0 / self.rate)


def test_budget_drops_silent_connections_before_speaking_ones_and_caps_each_source():
    budget = HandshakeBudget(total=3, per_source=2)
    assert budget.admit("a1", "A") == []
    budget.spoke("a1")
    assert budget.admit("a2", "A") == []
    assert budget.admit("a3", "A") == ["a2"]  # A's oldest silent one, not a1 which spoke
    assert budget.admit("b1", "B") == []
    assert budget.admit("c1", "C") == ["a3"]  # full: the oldest silent connection anywhere
    budget.spoke("b1")
    budget.spoke("c1")
    assert budget.admit("d1", "D") == ["a1"]  # only speaking ones left: the oldest
    budget.forget("b1")
    assert len(budget) == 2 and "b1" not in budget


@pytest.mark.processes
@pytest.mark.parametrize(
    "source,hello",
    [("127.0.0.1", False), ("127.0.0.2", False), ("127.0.0.2", True)],
    ids=["bare-same-address", "bare-other-address", "stalled-hellos"],
)
def test_agents_connect_during_a_pre_auth_flood(certs, tmp_path, source, hello):
    # Before the fix, 64 unauthenticated sockets (max_connections) locked every agent out for 10 s.
    server = start_twistd("server", server_config(certs, max_connections=4), tmp_path)
    first = start_twistd("agent", agent_config(certs, server.port), tmp_path, name="first")
    try:
        wait_connected(first)
        with Flood(server.port, source, count=1500, seconds=20, hello=hello) as flood:
            deadline = time.monotonic() + 10
            while flood.opened < 400 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert flood.opened >= 400, flood.opened
            started = time.monotonic()
            second = start_twistd("agent", agent_config(certs, server.port), tmp_path, name="second")
            try:
                wait_connected(second, seconds=5)
                connect_seconds = time.monotonic() - started
                assert probe(server.port) is None  # the health check gets through too
            finally:
                second.stop()
            assert flood.opened > 450  # the flood went on while the agent connected
        print(f"agent connected in {connect_seconds:.2f}s during a flood of {flood.opened} connections from {source}")
        assert wait_connected(first, seconds=1)["connected"]
        assert first.log().count(" is up") == 1, first.log()  # the established agent was never dropped
    finally:
        first.stop()
        server.stop()
    server.assert_no_unhandled_errors()


@pytest.mark.processes
def test_silent_connections_are_closed_at_the_handshake_deadline(certs, tmp_path):
    server = start_twistd("server", server_config(certs, handshake_timeout="1s"), tmp_path)
    try:
        s = socket.create_connection(("127.0.0.1", server.port))
        s.settimeout(4)
        started = time.monotonic()
        try:
            assert s.recv(1) == b""
        except ConnectionResetError:
            pass  # aborted: a reset is as good as an EOF here
        assert time.monotonic() - started < 3
        s.close()
    finally:
        server.stop()


def test_a_connection_whose_hello_waits_unread_is_not_taken_for_a_silent_one():
    """Accepted in one batch with a flood, a real client is silent only until the reactor
    reads it: its waiting bytes keep it, and the flood's oldest bare connect goes instead."""
    budget = HandshakeBudget(total=100, per_source=2)
    waiting = {"client"}
    assert budget.admit("client", "A", waiting.__contains__) == []
    assert budget.admit("bare1", "A", waiting.__contains__) == []
    assert budget.admit("bare2", "A", waiting.__contains__) == ["bare1"]  # before: the client
    assert "client" in budget


def test_bytes_waiting_peeks_at_a_real_socket_without_taking_them():
    from tunnel.server.service import _bytes_waiting

    class Transport:
        def __init__(self, sock):
            self.transport = self  # TLS over TCP: the same object is enough here
            self.sock = sock

        def getHandle(self):
            return self.sock

    listener = socket.create_server(("127.0.0.1", 0))
    with listener, socket.create_connection(listener.getsockname()) as client:
        accepted, _ = listener.accept()
        with accepted:
            accepted.setblocking(False)
            connection = type("Connection", (), {"transport": Transport(accepted)})()
            assert _bytes_waiting(connection) is False
            client.sendall(b"\x16\x03\x01")  # the start of a ClientHello
            deadline = time.monotonic() + 5
            while not _bytes_waiting(connection) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _bytes_waiting(connection) is True
            accepted.setblocking(True)
            assert accepted.recv(3) == b"\x16\x03\x01"  # still there for the TLS layer
