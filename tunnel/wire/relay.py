"""Relay bytes between two transports with producer/consumer backpressure.

In the spirit of `twisted.protocols.portforward`, in a screenful: each end writes what it
reads into the other end's transport, each transport is registered as the producer of the
other so a slow reader pauses the fast writer, a half-close (EOF / END_STREAM) travels
across as a half-close, and an end keeps its kind (`endings`: a clean end is a FIN, an
abort a reset).
"""

from __future__ import annotations

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from tunnel.wire.endings import Endings, Pipe, arm, ended_cleanly

__all__ = ["RelayEnd", "splice"]


@implementer(IHalfCloseableProtocol)
class RelayEnd(Protocol):
    """Reads from its own transport and writes into `sink`, the other side's transport.

    Bytes that arrive before a sink is attached (the server dialling the destination)
    are held; flow control bounds how many can arrive meanwhile.
    """

    def __init__(self, endings: Endings) -> None:
        self.endings = endings
        self.sink: Pipe | None = None
        self._held: list[bytes] = []
        self._read_eof = False
        self._write_eof = False

    def attach(self, sink: Pipe) -> None:
        self.sink = sink
        held, self._held = self._held, []
        for data in held:
            sink.write(data)
        if self._read_eof:
            self.endings.half_close(sink)

    def dataReceived(self, data: bytes) -> None:
        if self.sink is None:
            self._held.append(data)
        else:
            self.sink.write(data)

    def readConnectionLost(self) -> None:
        self._read_eof = True
        if self.sink is not None:
            self.endings.half_close(self.sink)
        self._close_when_both_done()

    def writeConnectionLost(self) -> None:
        self._write_eof = True
        self._close_when_both_done()

    def _close_when_both_done(self) -> None:
        if self._read_eof and self._write_eof and self.transport is not None:
            self.endings.close(self.transport)

    def connectionLost(self, reason: Failure | None = None) -> None:
        sink, self.sink = self.sink, None
        if sink is None:
            return
        if ended_cleanly(reason):
            self.endings.close(sink)
        else:
            self.endings.abort(sink)


def splice(a: Pipe, a_end: RelayEnd, b: Pipe, b_end: RelayEnd) -> None:
    """Join two connected ends: a's reads go to b, b's to a, each pausing the other."""
    arm(a)
    arm(b)
    a.registerProducer(a_end.endings.reader_of(b), True)
    b.registerProducer(b_end.endings.reader_of(a), True)
    a_end.attach(b)
    b_end.attach(a)
