"""Relay bytes between two transports with producer/consumer backpressure.

In the spirit of `twisted.protocols.portforward`, in a screenful: each end writes
what it reads into the other end's transport, each transport is registered as the
producer of the other so a slow reader pauses the fast writer, and a half-close
(EOF / END_STREAM) travels across as a half-close.

Endings carry their kind: only a clean end becomes a FIN (or END_STREAM) on the far side;
an abort (a reset, a lost tunnel, TLS cut without close_notify) becomes a TCP reset (or
RST_STREAM), so a truncated stream never looks complete. A relayed socket is armed to
reset (SO_LINGER 0) while it carries data, so even this process dying under it resets
the peer; a clean close disarms it first.
"""

from __future__ import annotations

import socket
import struct

try:  # POSIX: how much a socket still holds for its peer
    import fcntl
    import termios
except ImportError:  # Windows
    fcntl = termios = None

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer, ISSLTransport, ITransport
from twisted.internet.task import LoopingCall
from twisted.internet.protocol import Protocol
from twisted.protocols.tls import TLSMemoryBIOProtocol
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


LINGER = 3.0  # seconds a closing connection may go without its peer taking a byte

_RESET_ON_CLOSE = struct.pack("ii", 1, 0)
_FIN_ON_CLOSE = struct.pack("ii", 0, 0)


def _set_linger(transport, value: bytes) -> None:
    sock = _socket_under(transport)
    if sock is not None and sock.fileno() >= 0:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, value)
        except OSError:
            pass


def arm(transport) -> None:
    """From now on, closing the socket under `transport` without `close` (an abort, or this
    process dying) resets the peer instead of sending a FIN that would look like an end."""
    _set_linger(transport, _RESET_ON_CLOSE)


def abort(transport, clock=None) -> None:
    """End abnormally: RST_STREAM for a tunnel stream; for a socket (also under TLS: no
    close_notify), a TCP reset once what is already queued for its peer has reached it,
    so a slow reader still gets every byte that got this far, then learns it was cut."""
    arm(transport)
    sock = _socket_under(transport)
    if sock is None or _undelivered(transport, sock) == 0:
        _abort_now(transport)
        return
    unregister = getattr(transport, "unregisterProducer", None)
    if unregister is not None:
        unregister()
    transport.pauseProducing()  # nothing more is read: it would have nowhere to go
    if clock is None:
        from twisted.internet import reactor as clock
    _ResetWhenDelivered(transport, sock, clock)


def _abort_now(transport) -> None:
    # Twisted's TLS abortConnection sends close_notify first, which reads as a clean end:
    # a TLS connection is cut by aborting the TCP connection under it.
    if isinstance(transport, TLSMemoryBIOProtocol) and transport.transport is not None:
        transport = transport.transport
    transport.abortConnection()


DELIVERY_POLL = 0.05  # seconds between looks at what an aborting socket still holds


class _ResetWhenDelivered:
    """Resets a socket once its peer has acknowledged every byte queued for it, or once
    the peer has taken nothing for LINGER seconds."""

    def __init__(self, transport, sock: socket.socket, clock) -> None:
        self.transport, self.sock, self.clock = transport, sock, clock
        self.progress = delivery_progress(transport)
        self.stalled_since = clock.seconds()
        clock.callLater(DELIVERY_POLL, self.check)

    def check(self) -> None:
        progress = delivery_progress(self.transport)
        if progress is None:
            return  # gone in the meantime
        now = self.clock.seconds()
        if progress != self.progress:
            self.progress, self.stalled_since = progress, now
        if _undelivered(self.transport, self.sock) == 0 or now - self.stalled_since >= LINGER:
            _abort_now(self.transport)
            return
        self.clock.callLater(DELIVERY_POLL, self.check)


def _queued_in_process(transport) -> int:
    """Bytes Twisted still holds for the peer: a TLS layer's and its TCP transport's queues."""
    queued = 0
    for _ in range(4):
        queued += sum(len(b) for b in getattr(transport, "_appSendBuffer", ()) or ())
        buffer = getattr(transport, "dataBuffer", b"")
        if isinstance(buffer, (bytes, bytearray, memoryview)):
            queued += len(buffer) - getattr(transport, "offset", 0) + getattr(transport, "_tempDataLen", 0)
        transport = getattr(transport, "transport", None)
        if transport is None:
            break
    return queued


_SIOCOUTQ = getattr(termios, "TIOCOUTQ", None) if termios is not None else None  # Linux: sent but not acknowledged, plus unsent


def _undelivered(transport, sock: socket.socket) -> int:
    """Bytes queued for the peer that it has not acknowledged (0 where that cannot be read)."""
    queued = _queued_in_process(transport)
    if _SIOCOUTQ is not None and sock.fileno() >= 0:
        try:
            queued += struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0]
        except OSError:
            pass
    return queued


def ended_cleanly(reason) -> bool:
    """Whether a connectionLost reason is an orderly end (both sides finished)."""
    return reason is None or reason.check(ConnectionDone) is not None


def close(transport: ITransport, linger: float | None = None, clock=None) -> None:
    """Close once flushed, but never wait on a peer that has stopped reading.

    `loseConnection` waits until everything queued has been sent, and a peer that
    accepts and never reads would keep the socket and its buffers forever. So the
    connection is watched while it closes: as long as the peer keeps taking bytes it
    may take them all; once it has taken none for `linger` seconds, it is aborted.
    (A TLS transport waits for its producer to go before it shuts down, so the
    producer is unregistered first.)"""
    _set_linger(transport, _FIN_ON_CLOSE)
    unregister = getattr(transport, "unregisterProducer", None)
    if unregister is not None:
        unregister()
    transport.loseConnection()
    if clock is None:
        from twisted.internet import reactor as clock
    _Linger(transport, LINGER if linger is None else linger, clock)


class _Linger:
    """Aborts a closing transport once its peer stops making progress."""

    def __init__(self, transport, linger: float, clock) -> None:
        self.transport, self.linger, self.clock = transport, linger, clock
        self.progress = delivery_progress(transport)
        if self.progress is not None:
            clock.callLater(linger, self.check)

    def check(self) -> None:
        progress = delivery_progress(self.transport)
        if progress is None:
            return  # closed in the meantime
        if progress == self.progress:
            self.transport.abortConnection()
            return
        self.progress = progress
        self.clock.callLater(self.linger, self.check)


def delivery_progress(transport) -> int | None:
    """A count that grows while the peer takes our bytes; None once the transport is gone.

    A tunnel stream counts what it has sent within the peer's flow-control window; a
    socket, what the peer has acknowledged (Linux `TCP_INFO`). Where neither can be read
    it stays constant, so the linger is a plain deadline."""
    counted = getattr(transport, "delivered", None)
    if counted is not None:
        return counted if getattr(transport, "connected", False) else None
    sock = _socket_under(transport)
    if sock is None or sock.fileno() < 0:
        return None
    return _bytes_acked(sock)


def _socket_under(transport) -> socket.socket | None:
    """The socket under a TCP transport, or under TLS (whose handle is its TLS object)."""
    for _ in range(4):
        try:
            handle = transport.getHandle()
        except AttributeError:  # no handle, or a TCP transport whose socket is gone
            handle = None
        if isinstance(handle, socket.socket):
            return handle
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None


# struct tcp_info (Linux): the state is its first byte, bytes_acked (Linux 4.1+) at 120.
_TCP_CLOSE = 7
_TCPI_BYTES_ACKED = struct.Struct("=Q")
_TCPI_BYTES_ACKED_OFFSET = 120


def _tcp_info(sock: socket.socket) -> bytes:
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_INFO", -1), 256)
    except OSError:  # not Linux, or not TCP
        return b""


def _bytes_acked(sock: socket.socket) -> int:
    info = _tcp_info(sock)
    if len(info) < _TCPI_BYTES_ACKED_OFFSET + 8:
        return 0
    return _TCPI_BYTES_ACKED.unpack_from(info, _TCPI_BYTES_ACKED_OFFSET)[0]


def _was_reset(sock: socket.socket) -> bool:
    info = _tcp_info(sock)
    return bool(info) and info[0] == _TCP_CLOSE


@implementer(IPushProducer)
class WatchedReader:
    """A socket transport as the producer of another transport.

    While it is paused the reactor does not look at its socket at all, so a peer that
    resets the connection meanwhile (a client aborting an upload to a destination that
    does not read) would go unnoticed for as long as the pause lasts: forever, if the
    other side never reads. Paused readers are swept every `LINGER` seconds and one
    whose peer has reset is aborted, which releases the relay on both sides."""

    def __init__(self, transport) -> None:
        self.transport = transport

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()
        _paused.add(self)
        global _sweep
        if _sweep is None:  # made on first use: a LoopingCall installs the reactor it finds
            _sweep = LoopingCall(_sweep_paused)
        if not _sweep.running:
            _sweep.start(LINGER, now=False)

    def resumeProducing(self) -> None:
        _paused.discard(self)
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        # The consumer is gone. How this side ends (FIN or reset) is the relay's decision,
        # made from the way the consumer ended: closing here would always look clean.
        _paused.discard(self)


def _sweep_paused() -> None:
    for reader in list(_paused):
        sock = _socket_under(reader.transport)
        if sock is None or sock.fileno() < 0:
            _paused.discard(reader)
        elif _was_reset(sock):
            _paused.discard(reader)
            reader.transport.abortConnection()
    if not _paused and _sweep.running:
        _sweep.stop()


_paused: set[WatchedReader] = set()
_sweep: LoopingCall | None = None


def reader_of(transport):
    """What to register as `transport`'s producer elsewhere: watched if it is a socket."""
    return WatchedReader(transport) if _socket_under(transport) is not None else transport


def half_close(transport: ITransport) -> None:
    """Send EOF but keep reading; TLS cannot half-close, so it closes once flushed.

    (Twisted's TLS wrapper forwards unknown attributes to the TCP socket beneath it,
    so `loseWriteConnection` would wrongly shut the raw socket under the TLS layer.)"""
    if not getattr(transport, "connected", True):
        return
    lose_write = getattr(transport, "loseWriteConnection", None)
    if lose_write is not None and not ISSLTransport.providedBy(transport):
        _set_linger(transport, _FIN_ON_CLOSE)
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
        if sink is None:
            return
        if ended_cleanly(reason):
            close(sink)
        else:
            abort(sink)


def splice(a: ITransport, a_end: RelayEnd, b: ITransport, b_end: RelayEnd) -> None:
    """Join two connected ends: a's reads go to b, b's to a, each pausing the other."""
    arm(a)
    arm(b)
    a.registerProducer(reader_of(b), True)
    b.registerProducer(reader_of(a), True)
    a_end.attach(b)
    b_end.attach(a)
