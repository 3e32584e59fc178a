"""The seam in memory (Twisted's StringTransport, iosim, task.Clock; no sockets): every
front hands `bridge` the same contract (`opener.Front`), and a client that leaves while
its destination is still being reached cancels the open, whichever front it came through."""

from __future__ import annotations

from types import SimpleNamespace

from test_mux import Collect, pair_in_memory
from test_properties import SocketLikeTransport, StubPages
from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from tunnel.agent import socks
from tunnel.agent.http_front import ProxySite
from tunnel.agent.socks_front import ProxyFactory
from tunnel.opener import IOpener, bridge
from tunnel.server.service import ConnectFront, StreamFront
from tunnel.wire.addresses import Destination
from tunnel.wire.endings import Endings


@implementer(IOpener)
class PendingOpener:
    """Every open waits for ever, and records being cancelled."""

    name = "pending"

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.cancelled: list[str] = []

    def answers_early(self, destination: Destination) -> bool:
        return False

    def open(self, destination: Destination, protocol) -> defer.Deferred:
        self.opened.append(destination.authority)
        return defer.Deferred(lambda _: self.cancelled.append(destination.authority))


def agent_client(opener: PendingOpener, request: bytes):
    site = ProxySite(Clock(), opener, StubPages())
    protocol = ProxyFactory(site).buildProtocol(None)
    transport = SocketLikeTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(request)
    return protocol, transport


def test_an_http_connect_client_leaving_cancels_the_open():
    opener = PendingOpener()
    protocol, transport = agent_client(opener, b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n")
    assert opener.opened == ["127.0.0.1:9"] and opener.cancelled == []
    protocol.connectionLost(Failure(ConnectionLost()))
    assert opener.cancelled == ["127.0.0.1:9"]
    assert transport.value() == b""  # nothing was answered: the client had gone


def test_a_socks5_client_leaving_cancels_the_open():
    from test_socks import connect_request

    opener = PendingOpener()
    greeting = bytes([socks.VERSION, 1, socks.NO_AUTH])
    protocol, _ = agent_client(opener, greeting + connect_request("example.test", 443))
    assert opener.opened == ["example.test:443"]
    protocol.connectionLost(Failure(ConnectionLost()))
    assert opener.cancelled == ["example.test:443"]


def test_a_server_http11_connect_client_leaving_cancels_the_dial():
    opener = PendingOpener()
    server = SimpleNamespace(opener=opener, endings=Endings(Clock()), out_of_descriptors=lambda: "")
    front = ConnectFront(server, "agent-1")
    front.makeConnection(SocketLikeTransport())
    front.dataReceived(b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n")
    assert opener.opened == ["127.0.0.1:9"]
    front.connectionLost(Failure(ConnectionLost()))
    assert opener.cancelled == ["127.0.0.1:9"]


def test_an_http2_stream_reset_by_the_agent_cancels_the_servers_dial():
    opener = PendingOpener()
    endings = Endings(Clock())
    servers_mux = []

    def on_stream(stream):
        bridge(opener, stream.destination, stream, StreamFront(servers_mux[0], stream, endings), endings)

    agent, server, pump = pair_in_memory(on_stream)
    servers_mux.append(server)
    stream = agent.open_stream(Destination("example.test", 443), Collect())
    stream.ready.addErrback(lambda _: None)  # it is never answered: that is the point
    pump.flush()
    assert opener.opened == ["example.test:443"] and opener.cancelled == []
    stream.abortConnection()  # RST_STREAM: the agent's client went away
    pump.flush()
    assert opener.cancelled == ["example.test:443"]


def test_a_client_still_there_keeps_its_open():
    opener = PendingOpener()
    agent_client(opener, b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n")
    assert opener.opened == ["127.0.0.1:9"] and opener.cancelled == []


def test_an_absolute_form_client_leaving_cancels_the_open():
    opener = PendingOpener()
    protocol, transport = agent_client(
        opener, b"POST http://127.0.0.1:9/order HTTP/1.1\r\nHost: 127.0.0.1:9\r\nContent-Length: 2\r\n\r\nok"
    )
    assert opener.opened == ["127.0.0.1:9"] and opener.cancelled == []
    protocol.connectionLost(Failure(ConnectionLost()))
    assert opener.cancelled == ["127.0.0.1:9"]
    assert transport.value() == b""


@implementer(IOpener)
class OpenerOnCue:
    """Every open waits until the test fires it: `answer()` gives its protocol a stream."""

    name = "on cue"

    def __init__(self) -> None:
        self.pending: list[tuple[object, defer.Deferred]] = []

    def answers_early(self, destination: Destination) -> bool:
        return False

    def open(self, destination: Destination, protocol) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.pending.append((protocol, d))
        return d

    def answer(self) -> SocketLikeTransport:
        protocol, d = self.pending.pop(0)
        stream = SocketLikeTransport()
        protocol.makeConnection(stream)
        d.callback(None)
        return stream


def test_a_held_client_is_read_up_to_a_bound_then_paused_and_its_bytes_arrive_whole_and_in_order():
    from tunnel.wire.handover import HOLD_LIMIT

    opener = OpenerOnCue()
    protocol, client = agent_client(opener, b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: x\r\n\r\nfirst;")
    sent = b"first;"
    chunk = bytes(range(256)) * 64  # 16 KiB
    while client.producerState != "paused":
        assert len(sent) <= HOLD_LIMIT + 2 * len(chunk), "a held client was never paused"
        protocol.dataReceived(chunk)
        sent += chunk
    assert len(sent) > HOLD_LIMIT
    stream = opener.answer()
    assert client.value().startswith(b"HTTP/1.1 200")
    assert client.producerState == "producing"
    assert stream.value() == sent


def test_a_client_that_ends_its_side_while_held_has_given_up():
    opener = PendingOpener()
    protocol, client = agent_client(opener, b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: x\r\n\r\nbytes for it")
    protocol.readConnectionLost()  # a FIN before any answer: as squid and nginx take it, it left
    assert client.disconnected and client.value() == b""
    protocol.connectionLost(Failure(ConnectionLost()))
    assert opener.cancelled == ["127.0.0.1:9"]
