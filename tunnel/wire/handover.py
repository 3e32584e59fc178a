"""The one way a connection changes hands mid-stream.

A front parses a request, then gives the connection to a relay that copies bytes; the
proxy port's sniffer reads one byte, then gives the connection to the front it chose.
Each does it the same way: `hand_over(successor)`, after which every event the
transport delivers goes to the successor. Until then the subclass's own `received`,
`read_ended`, `write_ended` and `lost` see them. (Twisted offers no public way to swap
a transport's protocol, so the first protocol stays and forwards: one method call per
read.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol, ITCPTransport
from twisted.internet.protocol import Protocol
from zope.interface import implementer


@implementer(IHalfCloseableProtocol)
class HandsOver(Protocol):
    # Typed as Twisted's TCP transport, not Protocol's Optional: makeConnection sets it
    # before any of these methods runs, and it is a TCP (or TLS) connection or a tunnel stream.
    transport: ITCPTransport
    successor: Any = None  # a Protocol that is also IHalfCloseableProtocol
    _left = False
    _on_gone: list[Callable[[], object]] | None = None

    def when_gone(self, callback: Callable[[], object]) -> None:
        """Call `callback` once this connection is lost (at once if it is): how `bridge`
        learns that a front's client left (`opener.Front`)."""
        if self._left:
            callback()
            return
        if self._on_gone is None:
            self._on_gone = []
        self._on_gone.append(callback)

    def hand_over(self, successor: Any) -> None:
        """From now on `successor` (already connected to the transport) gets every event."""
        self.successor = successor

    # What the subclass does while it still holds the connection.
    def received(self, data: bytes) -> None:
        raise NotImplementedError

    def read_ended(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def write_ended(self) -> None:
        pass

    def lost(self, reason) -> None:
        pass

    # Twisted's side: forwarded once handed over.
    def dataReceived(self, data: bytes) -> None:
        if self.successor is not None:
            self.successor.dataReceived(data)
        else:
            self.received(data)

    def readConnectionLost(self) -> None:
        if self.successor is not None:
            self.successor.readConnectionLost()
        else:
            self.read_ended()

    def writeConnectionLost(self) -> None:
        if self.successor is not None:
            self.successor.writeConnectionLost()
        else:
            self.write_ended()

    def connectionLost(self, reason=None) -> None:
        self._left = True
        self.lost(reason)
        callbacks, self._on_gone = self._on_gone or [], None
        for callback in callbacks:
            callback()
        if self.successor is not None:
            self.successor.connectionLost(reason)
