"""TCP writes (and half-closes) go to the socket at once when nothing is queued, not a
reactor turn later.

Twisted's TCP transport only queues in `write()` and sends when epoll next reports the
socket writable. Every relayed chunk then costs one more reactor iteration, two
`epoll_ctl` calls, and the latency of both. A short HTTPS exchange through the tunnel
is about eight such writes in each of agent and server; sending at once measured +15%
new connections per second (bench/run) and shortens every hop.

Only the easy case changes: a plain (not TLS) transport, an empty queue and a socket
that takes all the bytes. Anything else goes to the method this replaced: TLS started
with `startTLS()` is routed through the TLS layer as before, and a partial send, EAGAIN
or an error continues on Twisted's own path with what is left, so ordering, producer
flow control and error reporting stay Twisted's.

This replaces a method of Twisted's for the whole process, so it fails closed: it
installs only over the exact method it was written against (by name and by what that
method does), and only where the queue attributes it reads exist. Otherwise Twisted is
left alone. (Offered upstream as an option of Twisted's TCP transport; see the README.)
"""

from __future__ import annotations

from typing import Any

from twisted.internet import abstract, tcp

_queued_write = abstract.FileDescriptor.write
_replaced: Any = None  # tcp.Connection.write as it was before install()
_replaced_lose_write: Any = None  # and its loseWriteConnection

# What tcp.Connection.write was when this was written (Twisted 24.7 to 26.10): send
# through the TLS layer when TLS is on, else FileDescriptor.write.
_WRITTEN_AGAINST = "twisted.internet._newtls.ConnectionMixin.write"
_IT_USES = {"TLS", "connected", "protocol", "write", "FileDescriptor"}


def _write(self, data) -> None:
    if self.TLS:
        return _replaced(self, data)
    if (
        type(data) is bytes
        and data
        and self.connected
        and not self._writeDisconnected
        and not self._tempDataLen
        and self.offset == len(self.dataBuffer)
    ):
        try:
            sent = self.socket.send(data)
        except OSError:  # EAGAIN, or an error that Twisted's doWrite meets again and reports
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    _queued_write(self, data)


def _lose_write_connection(self) -> None:
    """A half-close with nothing queued shuts the socket's write side at once, as Twisted's
    doWrite would a reactor turn later (after an empty send and two epoll_ctl calls)."""
    if (
        not self.TLS
        and self.connected
        and not self.disconnecting
        and not self._writeDisconnected
        # doWrite would first ask a producer for more: only when there is none to ask.
        and (self.producer is None or (self.streamingProducer and not self.producerPaused))
        and not self._tempDataLen
        and self.offset == len(self.dataBuffer)
    ):
        self._writeDisconnecting = True
        self._writeDisconnected = True  # before the handler, as doWrite sets it
        self._closeWriteConnection()
        return
    _replaced_lose_write(self)


def _is_expected(method) -> bool:
    code = getattr(method, "__code__", None)
    name = f"{getattr(method, '__module__', '')}.{getattr(method, '__qualname__', '')}"
    return name == _WRITTEN_AGAINST and code is not None and set(code.co_names) >= _IT_USES


# Twisted's half-close when this was written: mark it, then let doWrite flush and shut.
_LOSE_WRITE_AGAINST = "twisted.internet.abstract.FileDescriptor.loseWriteConnection"
_DO_WRITE_USES = {"_writeDisconnecting", "_writeDisconnected", "_closeWriteConnection", "stopWriting"}


def _half_close_is_expected() -> bool:
    current = tcp.Connection.loseWriteConnection
    if current is _lose_write_connection:
        return True
    name = f"{getattr(current, '__module__', '')}.{getattr(current, '__qualname__', '')}"
    code = getattr(current, "__code__", None)
    do_write = getattr(abstract.FileDescriptor.doWrite, "__code__", None)
    return (
        name == _LOSE_WRITE_AGAINST
        and code is not None
        and set(code.co_names) == {"_writeDisconnecting", "startWriting"}
        and do_write is not None
        and set(do_write.co_names) >= _DO_WRITE_USES
        and callable(getattr(tcp.Connection, "_closeWriteConnection", None))
    )


def installable() -> bool:
    """The methods replaced, and the queue attributes read, are the ones this was written against."""
    current = tcp.Connection.write
    if current is _write:
        return _half_close_is_expected()
    return (
        _half_close_is_expected()
        and _is_expected(current)
        and hasattr(tcp.Connection, "TLS")
        and all(hasattr(abstract.FileDescriptor, name) for name in ("dataBuffer", "offset", "_writeDisconnected"))
        and "_tempDataLen" in abstract.FileDescriptor.__init__.__code__.co_names
    )


def install() -> bool:
    """Use eager writes for every TCP connection of this process; False if Twisted changed."""
    global _replaced, _replaced_lose_write
    if not installable():
        return False
    if tcp.Connection.write is not _write:
        _replaced = tcp.Connection.write
        tcp.Connection.write = _write  # type: ignore[method-assign]
    if tcp.Connection.loseWriteConnection is not _lose_write_connection:
        _replaced_lose_write = tcp.Connection.loseWriteConnection
        tcp.Connection.loseWriteConnection = _lose_write_connection  # type: ignore[method-assign]
    return True


def installed() -> bool:
    return tcp.Connection.write is _write
