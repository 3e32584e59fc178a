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

This replaces two methods of Twisted's for the whole process, so it is a patch of the
registry (tunnel/wire/patches.py) and fails closed: it installs only over the exact source
it was written against (and relies on `doWrite`'s, which finishes a half-close), and only
where the queue attributes it reads exist. Otherwise Twisted is left alone. (Offered
upstream as an option of Twisted's TCP transport; see the README.)
"""

from __future__ import annotations

from typing import Any

from twisted.internet import abstract, tcp

from tunnel.wire.patches import REGISTRY, Patch, Reliance, Replacement

_queued_write = abstract.FileDescriptor.write
# Twisted's own, as this module found them: what every case but the easy one goes to.
_twisted_write: Any = tcp.Connection.write
_twisted_lose_write: Any = tcp.Connection.loseWriteConnection


def _write(self, data) -> None:
    if self.TLS:
        return _twisted_write(self, data)
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
    _twisted_lose_write(self)


def _twisted_names() -> str | None:
    """What the fast paths read, and what they hand the rest to, are Twisted's as found."""
    if _twisted_write is _write or _twisted_lose_write is _lose_write_connection:
        return "imported after its own install: Twisted's methods are not known"
    missing = [n for n in ("dataBuffer", "offset", "_writeDisconnected") if not hasattr(abstract.FileDescriptor, n)]
    if not hasattr(tcp.Connection, "TLS") or not callable(getattr(tcp.Connection, "_closeWriteConnection", None)):
        missing.append("TLS or _closeWriteConnection")
    if "_tempDataLen" not in abstract.FileDescriptor.__init__.__code__.co_names:
        missing.append("_tempDataLen")
    return f"twisted.internet.abstract.FileDescriptor lacks {', '.join(missing)}" if missing else None


PATCH = REGISTRY.register(
    Patch(
        "eager TCP writes",
        "a write (or half-close) with nothing queued goes to the socket at once, not a reactor turn later",
        replaces=(
            # As in Twisted 26.10: the source each replaces, by sha256 (patches.source_fingerprint).
            Replacement(tcp.Connection, "write", "9a1ac7496539526b", ours=_write),
            Replacement(tcp.Connection, "loseWriteConnection", "7ed8b49b45bf0f57", ours=_lose_write_connection),
        ),
        relies_on=(Reliance(abstract.FileDescriptor, "doWrite", "33b469b3af894e6a"),),  # finishes a half-close
        also_needs=_twisted_names,
    )
)


def install() -> bool:
    """Use eager writes for every TCP connection of this process; False if Twisted changed."""
    return REGISTRY.install(PATCH.name)
