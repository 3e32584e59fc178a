"""Outgoing connects in fewer system calls (tunnel/wire/eager_connect.py), on real loopback
sockets and a real epoll reactor of the test's own, turned by hand; each test runs against
Twisted's own doConnect too, the control case."""

from __future__ import annotations

import socket
import sys
import time
from collections import Counter

import pytest
from twisted.internet import error, tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import ClientFactory, Protocol

from tunnel.wire import eager_connect, patches

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="installs on Linux only")


class Recorder(Protocol):
    def __init__(self) -> None:
        self.made = False
        self.data = b""
        self.lost = None

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason) -> None:
        self.lost = reason


class Factory(ClientFactory):
    noisy = False

    def __init__(self) -> None:
        self.protocol_made = Recorder()
        self.failed = None

    def buildProtocol(self, addr):
        return self.protocol_made

    def clientConnectionFailed(self, connector, reason) -> None:
        self.failed = reason


class CountingSocket:
    """The client's socket, counting the calls a connect makes on it."""

    def __init__(self, sock: socket.socket, calls: Counter) -> None:
        self._sock, self._calls = sock, calls

    def __getattr__(self, name: str):
        attr = getattr(self._sock, name)
        if name not in ("connect", "connect_ex", "getsockopt"):
            return attr

        def counted(*args):
            self._calls[name] += 1
            return attr(*args)

        return counted


class CountingPoller:
    """The reactor's epoll object, counting epoll_ctl calls."""

    def __init__(self, poller, calls: Counter) -> None:
        self._poller, self._calls = poller, calls

    def __getattr__(self, name: str):
        attr = getattr(self._poller, name)
        if name not in ("register", "modify", "unregister"):
            return attr

        def counted(*args):
            self._calls["epoll_ctl"] += 1
            return attr(*args)

        return counted


@pytest.fixture(params=["eager", "twisted"])
def mode(request, patched):
    if request.param == "eager":
        patched(eager_connect.PATCH.name)
    return request.param


def turn_until(reactor, done, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        reactor.iterate(0.01)


def connect(reactor, port: int, calls: Counter):
    """connectTCP, counting the calls on the client's socket from its making on."""

    class MadeSocket(socket.socket):
        def setblocking(self, flag: bool) -> None:
            calls["setblocking"] += 1
            super().setblocking(flag)

    factory = Factory()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "socket", MadeSocket)
        connector = reactor.connectTCP("127.0.0.1", port, factory)
    transport = connector.transport
    assert transport.socket.gettimeout() == 0.0  # non-blocking, either way
    transport.socket = CountingSocket(transport.socket, calls)  # before its first doConnect
    return connector, factory


def test_a_connect_takes_one_connect_one_error_read_and_three_epoll_calls(mode):
    """And one setblocking() fewer: the socket is made non-blocking by socket() itself
    (tcp.Connection's own setblocking(), which accepted sockets need, stays)."""
    reactor = EPollReactor()
    calls: Counter = Counter()
    reactor._poller = CountingPoller(reactor._poller, calls)
    listener = socket.create_server(("127.0.0.1", 0))
    connector, factory = connect(reactor, listener.getsockname()[1], calls)
    turn_until(reactor, lambda: factory.protocol_made.made)
    assert factory.protocol_made.made
    transport = connector.transport
    # Registered for reading only, as Twisted leaves it.
    assert transport in reactor.getReaders() and transport not in reactor.getWriters()
    expected = {"setblocking": 1, "connect_ex": 1, "getsockopt": 1, "epoll_ctl": 3}
    if mode == "twisted":
        expected = {"setblocking": 2, "connect_ex": 2, "getsockopt": 2, "epoll_ctl": 5}
    assert dict(calls) == expected
    listener.settimeout(5)
    peer, _ = listener.accept()
    peer.sendall(b"hello")
    turn_until(reactor, lambda: factory.protocol_made.data == b"hello")
    assert factory.protocol_made.data == b"hello"
    transport.write(b"back")
    turn_until(reactor, lambda: not transport.dataBuffer and not transport._tempDataBuffer)
    peer.settimeout(5)
    assert peer.recv(16) == b"back"
    peer.close()
    listener.close()
    reactor.disconnectAll()


def test_a_refused_connect_is_reported_as_twisted_reports_it(mode):
    reactor = EPollReactor()
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    _connector, factory = connect(reactor, port, Counter())
    turn_until(reactor, lambda: factory.failed is not None)
    assert factory.failed is not None
    assert factory.failed.check(error.ConnectionRefusedError), factory.failed
    assert not [r for r in reactor.getReaders() if isinstance(r, tcp.Client)] and not reactor.getWriters()


def test_a_peer_that_speaks_and_leaves_at_once_is_read_whole_then_a_clean_close(mode):
    """Readable before the connect is seen as done: the bytes and the FIN both arrive."""
    reactor = EPollReactor()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    _connector, factory = connect(reactor, listener.getsockname()[1], Counter())
    reactor.runUntilCurrent()  # the connect is made; the reactor has not polled
    peer, _ = listener.accept()  # the kernel finished the handshake
    peer.sendall(b"x" * 100_000)
    peer.close()
    listener.close()
    protocol = factory.protocol_made
    turn_until(reactor, lambda: protocol.lost is not None)
    assert protocol.made and protocol.data == b"x" * 100_000
    assert protocol.lost.check(error.ConnectionDone), protocol.lost


def test_a_connect_cancelled_before_the_reactor_turns_fails_as_cancelled(mode):
    reactor = EPollReactor()
    listener = socket.create_server(("127.0.0.1", 0))
    connector, factory = connect(reactor, listener.getsockname()[1], Counter())
    connector.stopConnecting()
    turn_until(reactor, lambda: factory.failed is not None)
    assert factory.failed.check(error.UserError), factory.failed
    for _ in range(3):
        reactor.iterate(0.01)  # the doConnect Twisted scheduled finds no connector and stops
    assert not factory.protocol_made.made
    listener.close()


def test_it_installs_only_over_the_doconnect_it_was_written_against(monkeypatch):
    registry, name = patches.registry(), eager_connect.PATCH.name
    assert eager_connect.PATCH.unfit() is None

    def changed(self):  # a Twisted whose doConnect is another one
        return None

    twisted_create = tcp.BaseClient.createInternetSocket
    monkeypatch.setattr(tcp.BaseClient, "doConnect", changed)
    assert not eager_connect.install()
    assert "BaseClient.doConnect is not the version it was written against" in registry.refusal(name)
    assert tcp.BaseClient.doConnect is changed
    assert tcp.BaseClient.createInternetSocket is twisted_create  # neither is replaced
    monkeypatch.undo()
    monkeypatch.setattr(tcp.BaseClient, "createInternetSocket", changed)
    assert eager_connect.PATCH.unfit() is not None
    monkeypatch.undo()
    monkeypatch.setattr(sys, "platform", "darwin")
    assert eager_connect.PATCH.unfit() == "not tried on darwin (only linux)"
