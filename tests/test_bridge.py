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
