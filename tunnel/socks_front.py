"""SOCKS5 on the agent's proxy port, and the first-byte sniffing that shares the port.

A SOCKS5 client's first byte is 0x05; an HTTP request starts with a method name. So one
listener serves `curl -x http://...`, `curl --socks5-hostname ...`, git and ssh's
`ProxyCommand nc -X 5 -x ...` alike.
"""

from __future__ import annotations

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from . import socks
from .agent_front import ProxyFront, _as_open_failed, refusals
from .logs import more
from .relay import RelayEnd, close, no_delay, splice

log = Logger(namespace="fluidity.agent")


@implementer(IHalfCloseableProtocol)
class Socks5Front(Protocol):
    """One SOCKS5 client: greeting, CONNECT through the tunnel, then a byte relay."""

    def __init__(self, agent) -> None:
        self.agent = agent
        self.parser = socks.Socks5Server()
        self.relay: RelayEnd | None = None
        self.finished = False
        self._pending = None
        self._timer = None

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.agent.clients += 1
        if self.agent.head_timeout:
            self._timer = self.agent.reactor.callLater(self.agent.head_timeout, self._close, f"no SOCKS5 request within {self.agent.head_timeout:g}s")

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()

    def dataReceived(self, data: bytes) -> None:
        if self.relay is not None:
            self.relay.dataReceived(data)
            return
        if self.finished:
            return
        try:
            for event in self.parser.receive_data(data):
                if isinstance(event, socks.Greeting):
                    answer = self.parser.choose(event)
                    self.transport.write(answer)
                    if answer[1] == socks.NO_ACCEPTABLE_METHOD:
                        self._close("SOCKS5 client offers no method we accept (only no-authentication)")
                        return
                    self.dataReceived(b"")  # a request sent with the greeting
                    return
                if isinstance(event, socks.Connect):
                    self._connect(event.destination)
                    return
        except socks.SocksError as e:
            if e.reply is not None:
                self.transport.write(socks.reply(e.reply))
            self._close(str(e))

    def _connect(self, destination) -> None:
        self._disarm()
        self.transport.pauseProducing()
        upstream = RelayEnd()
        self._pending = self.agent.open(destination, upstream)
        self._pending.addCallbacks(self._opened, self._refused, callbackArgs=(destination, upstream), errbackArgs=(destination,))
        log.debug("SOCKS5 CONNECT {dest}", dest=destination.authority)

    def _opened(self, stream, destination, upstream: RelayEnd) -> None:
        self._pending = None
        self.agent.known.add(destination.authority)
        if self.finished:
            close(stream)
            return
        self.transport.write(socks.reply(socks.SUCCEEDED))
        self.relay = RelayEnd()
        self.relay.makeConnection(self.transport)
        if self.parser.trailing:
            self.relay.dataReceived(self.parser.trailing)
        splice(self.transport, self.relay, stream, upstream)
        self.transport.resumeProducing()

    def _refused(self, failure, destination) -> None:
        self._pending = None
        error = _as_open_failed(failure)
        suppressed = refusals(f"{error.status} {destination.authority}")
        if suppressed is not None:
            log.info("SOCKS5 CONNECT {dest} failed: {status} {reason}{more}", dest=destination.authority, status=error.status, reason=error.reason, more=more(suppressed))
        if not self.finished:
            self.transport.write(socks.reply(socks.reply_for_status(error.status)))
            self._close(error.reason)

    def _close(self, why: str) -> None:
        log.debug("SOCKS5 client closed: {why}", why=why)
        self.finished = True
        close(self.transport)

    def readConnectionLost(self) -> None:
        if self.relay is not None:
            self.relay.readConnectionLost()
        elif not self.finished and self._pending is None:
            self._close("client closed before a request")

    def writeConnectionLost(self) -> None:
        if self.relay is not None:
            self.relay.writeConnectionLost()

    def connectionLost(self, reason=None) -> None:
        self.finished = True
        self._disarm()
        self.agent.clients -= 1
        if self.relay is not None:
            self.relay.connectionLost(reason)


@implementer(IHalfCloseableProtocol)
class SniffingFront(Protocol):
    """Waits for the first byte, then becomes the SOCKS5 or the HTTP front for good:
    the chosen front's methods replace these, so no byte pays for the indirection."""

    def __init__(self, agent) -> None:
        self.agent = agent
        self._timer = None

    def connectionMade(self) -> None:
        if self.agent.head_timeout:
            self._timer = self.agent.reactor.callLater(self.agent.head_timeout, self.transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:
        if not data:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        front = Socks5Front(self.agent) if data[0] == socks.VERSION else ProxyFront(self.agent)
        for name in ("dataReceived", "readConnectionLost", "writeConnectionLost", "connectionLost"):
            setattr(self, name, getattr(front, name))
        front.makeConnection(self.transport)
        front.dataReceived(data)

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()  # closed before saying anything

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason=None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()


class ProxyFactory(Factory):
    noisy = False

    def __init__(self, agent) -> None:
        self.agent = agent

    def buildProtocol(self, addr):
        return SniffingFront(self.agent)
