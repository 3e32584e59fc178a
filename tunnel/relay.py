"""Relay bytes between two transports with producer/consumer backpressure.

In the spirit of `twisted.protocols.portforward`, in a screenful: each end writes
what it reads into the other end's transport, each transport is registered as the
producer of the other so a slow reader pauses the fast writer, and a half-close
(EOF / END_STREAM) travels across as a half-close.
"""

from __future__ import annotations

from twisted.internet.interfaces import IHalfCloseableProtocol, ISSLTransport, ITransport
from twisted.internet.protocol import Protocol
from zope.interface import implementer


def no_delay(transport) -> None:
    """Disable Nagle on the TCP socket under `transport` (through TLS if need be):
    a tunnel forwards small writes that must not wait for the peer's delayed ACK."""
    tcp = getattr(transport, "transport", None) or transport
    set_no_delay = getattr(tcp, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:
            pass


def close(transport: ITransport) -> None:
    """Close once flushed. A TLS transport waits for its producer to go before it
    shuts down, so the producer is unregistered first."""
    unregister = getattr(transport, "unregisterProducer", None)
    if unregister is not None:
        unregister()
    transport.loseConnection()


def half_close(transport: ITransport) -> None:
    """Send EOF but keep reading; TLS cannot half-close, so it closes once flushed.

    (Twisted's TLS wrapper forwards unknown attributes to the TCP socket beneath it,
    so `loseWriteConnection` would wrongly shut the raw socket under the TLS layer.)"""
    if not getattr(transport, "connected", True):
        return
    lose_write = getattr(transport, "loseWriteConnection", None)
    if lose_write is not None and not ISSLTransport.providedBy(transport):
        lose_write()
    else:
        close(transport)


@implementer(IHalfCloseableProtocol)
class RelayEnd(Protocol):
    """Reads from its own transport and writes into `sink`, the other side's transport.

    Bytes that arrive before a sink is attached (the server dialling the
    destination) are held; flow control bounds how many can arrive meanwhile.
    """

    def __init__(self, sink: ITransport | None = None) -> None:
        self.sink = sink
        self._held: list[bytes] = []
        self._read_eof = False
        self._write_eof = False

    def attach(self, sink: ITransport) -> None:
        self.sink = sink
        held, self._held = self._held, []
        for data in held:
            sink.write(data)
        if self._read_eof:
            half_close(sink)

    def dataReceived(self, data: bytes) -> None:
        if self.sink is None:
            self._held.append(data)
        else:
            self.sink.write(data)

    def readConnectionLost(self) -> None:
        self._read_eof = True
        if self.sink is not None:
            half_close(self.sink)
        self._close_when_both_done()

    def writeConnectionLost(self) -> None:
        self._write_eof = True
        self._close_when_both_done()

    def _close_when_both_done(self) -> None:
        if self._read_eof and self._write_eof and self.transport is not None:
            close(self.transport)

    def connectionLost(self, reason=None) -> None:
        sink, self.sink = self.sink, None
        if sink is not None:
            close(sink)


def splice(a: ITransport, a_end: RelayEnd, b: ITransport, b_end: RelayEnd) -> None:
    """Join two connected ends: a's reads go to b, b's to a, each pausing the other."""
    a.registerProducer(b, True)
    b.registerProducer(a, True)
    a_end.attach(b)
    b_end.attach(a)
