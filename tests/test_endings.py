"""Endings keep their timers on the clock they were built with (a `task.Clock` here, no
reactor running): the linger that aborts a close the peer stopped taking, the reset that
waits for queued bytes, and the sweep of paused readers whose peer reset."""

from __future__ import annotations

import queue
import socket
import ssl
import struct
import threading
import time
from typing import Any

import pytest
from support import Listener, pattern
from test_eager_write import Producer, mode  # noqa: F401 (a fixture: Twisted's TCP writes, and eager ones)
from test_relay import ending
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory

from tunnel.wire.endings import LINGER, Endings, socket_under
from tunnel.wire.relay import RelayEnd
from tunnel.wire.tls_batching import BatchedBufferingTLS


class Stream(StringTransport):
    """A tunnel stream as a transport: `delivered` counts what its peer took."""

    def __init__(self) -> None:
        super().__init__()
        self.connected = True
        self.delivered = 0
        self.aborted = False

    def unregisterProducer(self) -> None:
        self.producer = None  # as Twisted's own transports: no error when there is none

    def abortConnection(self) -> None:
        self.aborted = True
        self.connected = False


def test_a_close_the_peer_stops_taking_is_aborted_after_the_linger_on_the_given_clock():
    clock = Clock()
    stream = Stream()
    Endings(clock).close(stream)
    assert stream.disconnecting and not stream.aborted
    assert [call.getTime() for call in clock.getDelayedCalls()] == [LINGER]
    clock.advance(LINGER)
    assert stream.aborted


def test_a_close_the_peer_keeps_taking_is_left_to_finish():
    clock = Clock()
    stream = Stream()
    Endings(clock, linger=1.0).close(stream)
    for _ in range(5):
        stream.delivered += 100  # the peer takes a little every second
        clock.advance(1.0)
        assert not stream.aborted
    clock.advance(1.0)  # and then nothing: aborted a linger later
    assert stream.aborted


def test_a_linger_given_to_close_overrides_the_endings_own():
    clock = Clock()
    stream = Stream()
    Endings(clock).close(stream, linger=0.5)
    clock.advance(0.5)
    assert stream.aborted


def test_an_abort_of_a_stream_is_at_once_and_sets_no_timer():
    clock = Clock()
    stream = Stream()
    Endings(clock).abort(stream)
    assert stream.aborted and not clock.getDelayedCalls()


class SocketTransport(StringTransport):
    """A transport over a real TCP socket, for what reads the kernel's view of it."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.paused = False
        self.aborted = False

    def getHandle(self) -> socket.socket:
        return self.sock

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def abortConnection(self) -> None:
        self.aborted = True


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        near = socket.create_connection(listener.getsockname(), timeout=5)
        far, _ = listener.accept()
    return near, far


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a peer's crashing kernel may."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_a_paused_reader_whose_peer_resets_is_swept_on_the_given_clock():
    clock = Clock()
    near, far = tcp_pair()
    try:
        transport = SocketTransport(near)
        reader = Endings(clock).reader_of(transport)
        reader.pauseProducing()
        assert transport.paused and [call.getTime() for call in clock.getDelayedCalls()] == [LINGER]
        clock.advance(LINGER)
        assert not transport.aborted  # the peer is still there: left paused
        reset(far)
        for _ in range(100):  # the RST crosses loopback at once; allow the kernel a moment
            near.settimeout(0.01)
            try:
                near.recv(1)
            except (TimeoutError, ConnectionResetError, BlockingIOError):
                pass
            clock.advance(LINGER)
            if transport.aborted:
                break
        assert transport.aborted
        assert not clock.getDelayedCalls()  # nothing paused any more: the sweep stopped
    finally:
        near.close()


def test_a_resumed_reader_is_no_longer_swept():
    clock = Clock()
    near, far = tcp_pair()
    try:
        transport = SocketTransport(near)
        reader = Endings(clock).reader_of(transport)
        reader.pauseProducing()
        reader.resumeProducing()
        reset(far)
        clock.advance(LINGER)
        assert not transport.aborted and not clock.getDelayedCalls()
    finally:
        near.close()


def test_a_relay_end_passes_on_a_clean_end_as_a_close_and_an_abort_as_an_abort():
    from twisted.internet.error import ConnectionDone, ConnectionLost
    from twisted.python.failure import Failure

    for reason, aborted in ((Failure(ConnectionDone()), False), (Failure(ConnectionLost()), True)):
        clock = Clock()
        end = RelayEnd(Endings(clock))
        end.makeConnection(StringTransport())
        sink = Stream()
        end.attach(sink)
        end.connectionLost(reason)
        assert sink.aborted is aborted and sink.disconnecting is not aborted


class CountingSocket(socket.socket):
    """A real socket whose setsockopt calls are counted."""

    calls: list

    def setsockopt(self, *args) -> None:  # type: ignore[override]
        self.calls.append(args)
        super().setsockopt(*args)


class ClosingTransport(SocketTransport):
    """As a TCP transport: it may be closed or half-closed with no producer registered."""

    def unregisterProducer(self) -> None:
        self.producer = None

    def loseWriteConnection(self) -> None:
        pass


def test_so_linger_is_set_only_when_it_changes():
    """Issue 27, system calls per connection: a socket starts with a FIN on close, so only
    arming changes it, and a half-close then a close disarm it once, not twice."""
    from tunnel.wire.endings import arm

    near, far = tcp_pair()
    counting = CountingSocket(fileno=near.detach())
    counting.calls = []
    try:
        endings = Endings(Clock())
        endings.half_close(ClosingTransport(counting))  # never armed: nothing to undo
        assert counting.calls == []
        arm(ClosingTransport(counting))
        arm(ClosingTransport(counting))
        assert len(counting.calls) == 1
        assert counting.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8) == struct.pack("ii", 1, 0)
        endings.half_close(ClosingTransport(counting))
        endings.close(ClosingTransport(counting))
        assert len(counting.calls) == 2
        assert counting.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8) == struct.pack("ii", 0, 0)
    finally:
        counting.close()
        far.close()


# -- a half-close (or close) while the producer is paused: the end still goes out (issue 44) -----

END_SIZE = 4 << 20  # far over Twisted's 64 KiB: the producer is paused when the end is asked for


class Connected(Protocol):
    def connectionMade(self) -> None:
        self.made = True


def _slow_reader(tls: ssl.SSLContext | None, go: threading.Event, seen: queue.Queue):
    """A peer that takes nothing until `go`, then reads to the end: how did it end?"""

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            if tls is not None:
                conn = tls.wrap_socket(conn, server_side=True)
            go.wait(10)
            seen.put(ending(conn, 10))

    return serve


@pytest.mark.usefixtures("mode")
@pytest.mark.parametrize("how", ["half_close", "close"])
@pytest.mark.parametrize("kind", ["tcp", "tls", "tls-batched"])
def test_the_end_goes_out_after_what_is_queued_while_the_producer_is_paused(certs, kind, how):
    """Issue 44: bytes queued past Twisted's buffer level, the producer (the other side's
    reader) paused, then the end. On real loopback sockets, Twisted's TCP transport with and
    without eager writes (`mode`), and its TLS transports (which cannot half-close, so
    close): the peer reads every byte and then the end, never waits for one that does not come."""
    tls_server = None
    factory: Any = ClientFactory.forProtocol(Connected)
    if kind != "tcp":
        tls_server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls_server.load_cert_chain(certs.path("server.pem"), certs.path("server.key"))
        factory = TLSMemoryBIOFactory(CertificateOptions(), True, factory)
        if kind == "tls-batched":
            factory.protocol = BatchedBufferingTLS
    go, seen = threading.Event(), queue.Queue()
    peer = Listener(_slow_reader(tls_server, go, seen), receive_buffer=1 << 16)
    reactor = EPollReactor()
    try:
        connector = reactor.connectTCP("127.0.0.1", peer.port, factory)
        protocol = _turn_until(reactor, lambda: _connected_protocol(connector))
        transport = protocol.transport
        socket_under(transport).setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
        producer = Producer()  # the other side's reader, registered on the transport being ended
        transport.registerProducer(producer, True)
        transport.write(pattern(END_SIZE))
        assert _turn_until(reactor, lambda: producer.events == ["pause"]), producer.events
        getattr(Endings(reactor), how)(transport)
        go.set()
        _turn_until(reactor, lambda: not seen.empty(), seconds=15)
        assert seen.get(timeout=1) == (END_SIZE, "eof")
    finally:
        go.set()
        peer.close()
        reactor.disconnectAll()


def _connected_protocol(connector) -> Any:
    """The protocol the test talks to (under TLS, the one TLS wraps), once connected."""
    transport = getattr(connector, "transport", None)
    protocol = getattr(transport, "protocol", None)
    protocol = getattr(protocol, "wrappedProtocol", protocol)
    return protocol if getattr(protocol, "made", False) else None


def _turn_until(reactor: EPollReactor, predicate, seconds: float = 5.0) -> Any:
    """Turn the test's own reactor until `predicate()` is truthy (bounded in time); its value."""
    deadline = time.monotonic() + seconds
    while not (value := predicate()) and time.monotonic() < deadline:
        reactor.iterate(0.001)
    return value
