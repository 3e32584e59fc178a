"""How a relayed connection ends, so that an end keeps its kind.

Only a clean end becomes a FIN (or END_STREAM) on the far side; an abort (a reset, a lost
tunnel, TLS cut without close_notify) becomes a TCP reset (or RST_STREAM), so a truncated
stream never looks complete. A relayed socket is armed to reset (SO_LINGER 0) while it
carries data, so even this process dying under it resets the peer; a clean close disarms
it first. Closing never waits on a peer that has stopped reading (the linger), and a
paused reader whose peer resets is noticed (the sweep).

`Endings` holds the timers: it is built with the reactor (or a `task.Clock` in a test), so
every deadline here runs on the clock it was given. The rest are plain functions.
"""

from __future__ import annotations

import socket
import struct
import weakref
from typing import Any, Protocol

try:  # POSIX: how much a socket still holds for its peer
    import fcntl
    import termios
except ImportError:  # Windows
    fcntl = termios = None  # type: ignore[assignment]

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer, IReactorTime, ISSLTransport
from twisted.internet.task import LoopingCall
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "LINGER",
    "Endings",
    "Pipe",
    "arm",
    "delivery_progress",
    "ended_cleanly",
    "no_delay",
    "socket_under",
    "undelivered",
]

LINGER = 3.0  # seconds a closing connection may go without its peer taking a byte
DELIVERY_POLL = 0.05  # seconds between looks at what an aborting socket still holds


class Pipe(Protocol):
    """What a relay does with a transport: a TCP or TLS connection, or a tunnel stream."""

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def registerProducer(self, producer: Any, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...


def no_delay(transport: Any) -> None:
    """Disable Nagle on the TCP socket under `transport` (through TLS if need be):
    a tunnel forwards small writes that must not wait for the peer's delayed ACK."""
    tcp = getattr(transport, "transport", None) or transport
    set_no_delay = getattr(tcp, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:
            pass


def ended_cleanly(reason: Failure | None) -> bool:
    """Whether a connectionLost reason is an orderly end (both sides finished)."""
    return reason is None or isinstance(reason.value, ConnectionDone)


_RESET_ON_CLOSE = struct.pack("ii", 1, 0)
_FIN_ON_CLOSE = struct.pack("ii", 0, 0)


_ARMED: weakref.WeakSet[socket.socket] = weakref.WeakSet()  # sockets whose close would now reset


def _set_linger(transport: Any, value: bytes) -> None:
    """Set SO_LINGER only when it changes: a socket starts with a close that sends a FIN, and
    a relayed connection is half-closed, then closed (one system call each saved)."""
    sock = socket_under(transport)
    if sock is None or sock.fileno() < 0 or (value == _FIN_ON_CLOSE) == (sock not in _ARMED):
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, value)
    except OSError:
        return
    if value == _FIN_ON_CLOSE:
        _ARMED.discard(sock)
    else:
        _ARMED.add(sock)


def arm(transport: Any) -> None:
    """From now on, closing the socket under `transport` without `close` (an abort, or this
    process dying) resets the peer instead of sending a FIN that would look like an end."""
    _set_linger(transport, _RESET_ON_CLOSE)


class Endings:
    """Closing and aborting with their timers on one clock, and the sweep of paused readers."""

    def __init__(self, clock: IReactorTime, linger: float = LINGER) -> None:
        self.clock = clock
        self.linger = linger
        self._paused: set[WatchedReader] = set()
        self._sweep: LoopingCall | None = None

    def close(self, transport: Any, linger: float | None = None) -> None:
        """Close once flushed, but never wait on a peer that has stopped reading.

        `loseConnection` waits until everything queued has been sent, and a peer that
        accepts and never reads would keep the socket and its buffers forever. So the
        connection is watched while it closes: as long as the peer keeps taking bytes it
        may take them all; once it has taken none for `linger` seconds, it is aborted.
        (Its producer is let go first: `_release_producer`.)"""
        _set_linger(transport, _FIN_ON_CLOSE)
        _release_producer(transport)
        transport.loseConnection()
        _Linger(transport, self.linger if linger is None else linger, self.clock)

    def abort(self, transport: Any) -> None:
        """End abnormally: RST_STREAM for a tunnel stream; for a socket (also under TLS: no
        close_notify), a TCP reset once what is already queued for its peer has reached it,
        so a slow reader still gets every byte that got this far, then learns it was cut."""
        arm(transport)
        sock = socket_under(transport)
        if sock is None or _undelivered(transport, sock) == 0:
            _abort_now(transport)
            return
        _release_producer(transport)
        transport.pauseProducing()  # nothing more is read: it would have nowhere to go
        _ResetWhenDelivered(transport, sock, self.clock, self.linger)

    def half_close(self, transport: Any) -> None:
        """Send EOF but keep reading; TLS cannot half-close, so it closes once flushed.

        The producer goes first (`_release_producer`): a half-close with a paused one
        registered never sends its FIN. (Twisted's TLS wrapper forwards unknown attributes
        to the TCP socket beneath it, so `loseWriteConnection` would wrongly shut the raw
        socket under the TLS layer.)"""
        if not getattr(transport, "connected", True):
            return
        lose_write = getattr(transport, "loseWriteConnection", None)
        if lose_write is not None and not ISSLTransport.providedBy(transport):
            _set_linger(transport, _FIN_ON_CLOSE)
            _release_producer(transport)
            lose_write()
        else:
            self.close(transport)

    def reader_of(self, transport: Any) -> Any:
        """What to register as `transport`'s producer elsewhere: watched if it is a socket."""
        return WatchedReader(transport, self) if socket_under(transport) is not None else transport

    # -- the sweep: paused readers whose peer reset -----------------------------------------
    def _paused_now(self, reader: WatchedReader) -> None:
        self._paused.add(reader)
        if self._sweep is None:
            self._sweep = LoopingCall(self._sweep_paused)
            self._sweep.clock = self.clock
        if not self._sweep.running:
            self._sweep.start(self.linger, now=False)

    def _not_paused(self, reader: WatchedReader) -> None:
        self._paused.discard(reader)

    def _sweep_paused(self) -> None:
        for reader in list(self._paused):
            sock = socket_under(reader.transport)
            if sock is None or sock.fileno() < 0:
                self._paused.discard(reader)
            elif _was_reset(sock):
                self._paused.discard(reader)
                reader.transport.abortConnection()
        if not self._paused and self._sweep is not None and self._sweep.running:
            self._sweep.stop()


@implementer(IPushProducer)
class WatchedReader:
    """A socket transport as the producer of another transport.

    While it is paused the reactor does not look at its socket at all, so a peer that
    resets the connection meanwhile (a client aborting an upload to a destination that
    does not read) would go unnoticed for as long as the pause lasts: forever, if the
    other side never reads. Paused readers are swept every linger period and one whose
    peer has reset is aborted, which releases the relay on both sides."""

    def __init__(self, transport: Any, endings: Endings) -> None:
        self.transport = transport
        self._endings = endings

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()
        self._endings._paused_now(self)

    def resumeProducing(self) -> None:
        self._endings._not_paused(self)
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        # The consumer is gone. How this side ends (FIN or reset) is the relay's decision,
        # made from the way the consumer ended: closing here would always look clean.
        self._endings._not_paused(self)


def _release_producer(transport: Any) -> None:
    """Unregister the producer of a transport whose write side is being closed.

    Every close and half-close here goes through this first, and so does an abort that
    waits for delivery. The producer of a relayed transport is the reader of the other
    side, which has ended (or is being ended): it has nothing more to write. Left
    registered and paused (the socket's buffer over Twisted's 64 KiB when the end
    arrives), it stops the end: once the buffer drains, Twisted's `FileDescriptor.doWrite`
    resumes it instead of sending the FIN, and never looks again; a TLS transport waits
    for it to go before it shuts down (upstream/twisted-half-close-paused-producer.md)."""
    unregister = getattr(transport, "unregisterProducer", None)
    if unregister is not None:
        unregister()


def _abort_now(transport: Any) -> None:
    # Twisted's TLS abortConnection sends close_notify first, which reads as a clean end:
    # a TLS connection is cut by aborting the TCP connection under it.
    if isinstance(transport, TLSMemoryBIOProtocol) and transport.transport is not None:
        transport = transport.transport
    transport.abortConnection()


class _ResetWhenDelivered:
    """Resets a socket once its peer has acknowledged every byte queued for it, or once
    the peer has taken nothing for `linger` seconds."""

    def __init__(self, transport: Any, sock: socket.socket, clock: IReactorTime, linger: float) -> None:
        self.transport, self.sock, self.clock, self.linger = transport, sock, clock, linger
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
        if _undelivered(self.transport, self.sock) == 0 or now - self.stalled_since >= self.linger:
            _abort_now(self.transport)
            return
        self.clock.callLater(DELIVERY_POLL, self.check)


class _Linger:
    """Aborts a closing transport once its peer stops making progress."""

    def __init__(self, transport: Any, linger: float, clock: IReactorTime) -> None:
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


def _queued_in_process(transport: Any) -> int:
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


# Linux: sent but not acknowledged, plus unsent
_SIOCOUTQ = getattr(termios, "TIOCOUTQ", None) if termios is not None else None


def _undelivered(transport: Any, sock: socket.socket) -> int:
    """Bytes queued for the peer that it has not acknowledged (0 where that cannot be read)."""
    queued = _queued_in_process(transport)
    if _SIOCOUTQ is not None and sock.fileno() >= 0:
        try:
            queued += int(struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0])
        except OSError:
            pass
    return queued


def undelivered(transport: Any) -> int:
    """Bytes a socket transport (or TLS over one) holds for its peer, in this process and in
    the kernel, that the peer has not acknowledged; what this process holds for anything else."""
    sock = socket_under(transport)
    return _queued_in_process(transport) if sock is None else _undelivered(transport, sock)


def delivery_progress(transport: Any) -> int | None:
    """A count that grows while the peer takes our bytes; None once the transport is gone.

    A tunnel stream counts what it has sent within the peer's flow-control window; a
    socket, what the peer has acknowledged (Linux `TCP_INFO`). Where neither can be read
    it stays constant, so the linger is a plain deadline."""
    counted = getattr(transport, "delivered", None)
    if counted is not None:
        return int(counted) if getattr(transport, "connected", False) else None
    sock = socket_under(transport)
    if sock is None or sock.fileno() < 0:
        return None
    return _bytes_acked(sock)


def socket_under(transport: Any) -> socket.socket | None:
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
    return int(_TCPI_BYTES_ACKED.unpack_from(info, _TCPI_BYTES_ACKED_OFFSET)[0])


def _was_reset(sock: socket.socket) -> bool:
    info = _tcp_info(sock)
    return bool(info) and info[0] == _TCP_CLOSE
