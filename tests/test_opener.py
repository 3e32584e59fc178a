"""The opener seam: both openers keep the one contract, and every agent front answers early
for a destination the server reached before (the tunnel adds no round trip), through
real sockets. A frozen server (SIGSTOP) cannot answer anything: an answer the client gets
while it is frozen can only be the agent's early one."""

from __future__ import annotations

import signal
import socket
import struct
import time

import pytest
from support import read_head
from zope.interface.verify import verifyObject


def socks_connect(port: int, target_port: int, host: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"\x05\x01\x00" + b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack(">H", target_port))
    assert s.recv(2) == b"\x05\x00"
    return s


def http_connect(port: int, target_port: int, host: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(f"CONNECT {host}:{target_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return s


def socks_reply(s: socket.socket) -> bytes:
    reply = b""
    while len(reply) < 10:
        chunk = s.recv(10 - len(reply))
        if not chunk:
            break
        reply += chunk
    return reply


def echo_once(s: socket.socket, data: bytes) -> bytes:
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


@pytest.mark.parametrize("front", ["socks5", "connect"])
def test_a_destination_reached_before_is_answered_without_the_server(pair, echo, front):
    server, agent = pair
    opening = socks_connect if front == "socks5" else http_connect
    first = opening(agent.port, echo.port)  # the server reaches it once: now known
    head = socks_reply(first) if front == "socks5" else read_head(first)
    assert head.startswith((b"\x05\x00", b"HTTP/1.1 200")), head
    assert echo_once(first, b"hello") == b"hello"
    first.close()

    server.process.send_signal(signal.SIGSTOP)  # from here on the server answers nothing
    second = opening(agent.port, echo.port)
    second.settimeout(3)
    head = socks_reply(second) if front == "socks5" else read_head(second)
    assert head.startswith((b"\x05\x00", b"HTTP/1.1 200")), head  # the agent's own answer
    second.sendall(b"first bytes ride behind the request")
    server.process.send_signal(signal.SIGCONT)
    second.settimeout(10)
    got = b""
    while len(got) < len(b"first bytes ride behind the request"):
        got += second.recv(65536)
    assert got == b"first bytes ride behind the request"
    second.close()
    agent.assert_no_unhandled_errors()


@pytest.mark.parametrize("front", ["socks5", "connect"])
def test_a_first_time_destination_waits_for_the_servers_answer(pair, echo, front):
    server, agent = pair
    server.process.send_signal(signal.SIGSTOP)
    opening = socks_connect if front == "socks5" else http_connect
    s = opening(agent.port, echo.port)
    s.settimeout(1.5)
    with pytest.raises(socket.timeout):  # no answer the server did not give
        s.recv(1)
    server.process.send_signal(signal.SIGCONT)
    s.settimeout(10)
    head = socks_reply(s) if front == "socks5" else read_head(s)
    assert head.startswith((b"\x05\x00", b"HTTP/1.1 200")), head
    s.close()


def test_a_refusal_of_a_first_time_destination_is_readable_on_each_front(pair):
    _, agent = pair
    # The metadata address: refused by the server's egress policy before any packet is sent.
    for _ in range(2):  # a refusal is never remembered as reachable
        s = socks_connect(agent.port, 80, "169.254.169.254")
        assert socks_reply(s)[:2] == b"\x05\x02"  # connection not allowed by ruleset
        s = http_connect(agent.port, 80, "169.254.169.254")
        assert read_head(s).startswith(b"HTTP/1.1 403")


def test_both_openers_provide_the_interface():
    from twisted.internet import reactor

    from tunnel.agent.tunnel_opener import AgentOpener
    from tunnel.opener import IOpener
    from tunnel.server.dialer import DirectOpener
    from tunnel.server.egress import EgressPolicy

    assert verifyObject(IOpener, DirectOpener(reactor, EgressPolicy(), 5.0))
    assert verifyObject(IOpener, AgentOpener(tunnel=None))


def _gives_up_after(front: str, agent_port: int, authority: str) -> socket.socket:
    """A client's request for a first-time destination, with bytes for it behind."""
    host, port = authority.rsplit(":", 1)
    if front == "socks5":
        s = socks_connect(agent_port, int(port), host)
        s.sendall(b"hello")
        return s
    s = socket.create_connection(("127.0.0.1", agent_port), timeout=5)
    if front == "connect":
        s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\nhello".encode())
    else:
        head = f"POST http://{authority}/order HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 5\r\n\r\n"
        s.sendall(head.encode() + b"hello")
    return s


@pytest.mark.parametrize("front", ["absolute-form", "connect", "socks5"])
def test_a_client_that_gave_up_before_the_server_answered_sends_nothing_to_the_origin(pair, front):
    """The client's request waits for the server's first answer (the server is frozen),
    and the client gives up and closes meanwhile. When the server answers, the origin must
    get nothing of it: not an order nobody waits for, not bytes from a client that left."""
    from support import Listener

    received: list[bytes] = []

    def record(conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            while chunk := conn.recv(65536):
                received.append(chunk)
        except OSError:
            pass

    origin = Listener(record)
    try:
        server, agent = pair
        server.process.send_signal(signal.SIGSTOP)
        s = _gives_up_after(front, agent.port, origin.authority)
        s.settimeout(1)
        with pytest.raises(socket.timeout):  # waiting for the frozen server
            s.recv(1)
        s.close()
        time.sleep(0.5)  # the agent reads the client's leaving before the server wakes
        server.process.send_signal(signal.SIGCONT)
        time.sleep(2)  # time enough for the server to answer, and a wrongly sent request to arrive
        assert b"".join(received) == b""
        agent.assert_no_unhandled_errors()
    finally:
        origin.close()
