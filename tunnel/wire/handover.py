"""The one way a connection changes hands mid-stream.

A front parses a request, then gives the connection to a relay that copies bytes; the
proxy port's sniffer reads one byte, then gives the connection to the front it chose.
Each does it the same way: `hand_over(successor)`, after which every event the
transport delivers goes to the successor. Until then the subclass's own `received`,
`read_ended`, `write_ended` and `lost` see them. (Twisted offers no public way to swap
a transport's protocol, so the first protocol stays and forwards: one method call per
read.)

While its destination is being reached, a client is held (`hold`/`release`): what it
sends waits, yet its socket is still read, because a paused socket hides a client that
gives up and closes, and its leaving must cancel the open.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from tunnel.wire.transports import IConnection

HOLD_LIMIT = 65536  # bytes a held client may send before its socket is paused


@implementer(IHalfCloseableProtocol)
class HandsOver(Protocol):
    # Typed as Twisted's TCP transport, not Protocol's Optional: makeConnection sets it
    # before any of these methods runs, and it is a TCP (or TLS) connection or a tunnel stream.
    transport: IConnection
    successor: Any = None  # a Protocol that is also IHalfCloseableProtocol
    _left = False
    _on_gone: list[Callable[[], object]] | None = None
    _held: list[bytes] | None = None  # while held: what arrived, waiting for `release`
    _held_bytes = 0
    _paused_by_hold = False

    def when_gone(self, callback: Callable[[], object]) -> None:
        """Call `callback` once this connection is lost (at once if it is): how `bridge`
        learns that a front's client left (`opener.Front`)."""
        if self._left:
            callback()
            return
        if self._on_gone is None:
            self._on_gone = []
        self._on_gone.append(callback)

    def hold(self) -> None:
        """Keep what the client sends from here on until `release`, still reading its socket:
        a client that ends its side before it is answered has given up (as squid and nginx
        take it), so it is closed, and its leaving cancels what it waited for. Past
        HOLD_LIMIT bytes the socket itself is paused (a reset is still seen by the sweep)."""
        if self._held is None:
            self._held, self._held_bytes = [], 0

    def release(self) -> None:
        """Pass on what was held (to the successor, if there is one by now), then read on."""
        held, self._held = self._held, None
        if self._paused_by_hold:
            self._paused_by_hold = False
            self.transport.resumeProducing()
        if held:
            self.dataReceived(b"".join(held))

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
        if self._held is not None:
            self._held.append(data)
            self._held_bytes += len(data)
            if self._held_bytes > HOLD_LIMIT and not self._paused_by_hold:
                self._paused_by_hold = True
                self.transport.pauseProducing()
        elif self.successor is not None:
            self.successor.dataReceived(data)
        else:
            self.received(data)

    def readConnectionLost(self) -> None:
        if self._held is not None:  # it gave up waiting
            self._held = None
            self.transport.abortConnection()
        elif self.successor is not None:
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
