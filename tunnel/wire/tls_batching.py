"""Twisted's TLS protocol, moving a write or a read through OpenSSL in one pass.

`TLSMemoryBIOProtocol` cuts each application write into 16 KiB pieces and, for every piece,
calls `SSL_write`, reads the memory BIO and writes to the TCP transport: one `send()`
per TLS record, 65,536 of each per GiB, which was 44% of a bulk sender's CPU. On receipt,
each decrypted record goes to the application on its own, so h2 and the mux run four
times for one 64 KiB socket read. The tunnel carries bulk data over one connection, so
that per-record work is most of what it does.

`BatchedTLS` keeps Twisted's behaviour and changes only the batching:

* a write hands every record to OpenSSL first, then drains the BIO once and makes one
  `transport.write` (a partial write, `WantReadError` or an error is handled as
  Twisted does, from where it happened);
* a read gathers every record the received bytes complete, delivers them in one
  `dataReceived`, and only then acts on a close_notify or an error that followed them;
* the TCP transport under it reads 256 KiB at a time instead of 64 KiB (see
  `READ_SIZE` for what else that level means).

It overrides three private methods of Twisted's class, so it fails closed: each override
runs only when the method it replaces is, by its source text, the one it was written
against (Twisted 26.10) and the attributes it uses exist; otherwise it calls Twisted's own.
The fix offered upstream is written up in upstream/twisted-tls-batching.md.
"""

from __future__ import annotations

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet import interfaces, tcp
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from tunnel.wire.patches import REGISTRY, Patch, Reliance

__all__ = ["PATCH", "BatchedBufferingTLS", "BatchedTLS", "BatchedTLSClientEndpoint", "applies", "disable"]

RECORD = 2**14  # the largest TLS plaintext record
RECORD_READ = 2**15  # what Twisted asks SSL_read for; one record fits
# A TLS 1.3 record adds a 5-byte header, a content-type byte and a 16-byte tag.
RECORD_OVERHEAD = 5 + 1 + 16
# The tunnel's TCP transport reads this much per recv(). Twisted's FileDescriptor also
# pauses a producer registered on that transport once this much is queued unsent; the
# only producer there is the tunnel's own TLS layer, one per agent, so the level bounds
# one connection's queue, not a stream's (bench/compare.py measures RSS either way).
READ_SIZE = 2**18

_USES = ("_lostTLSConnection", "_aborted", "_bufferedWrite", "_tlsShutdownFinished", "_shutdownTLS", "_reason")


def _twisted_names() -> str | None:
    base = TLSMemoryBIOProtocol
    made = base.__init__, base.makeConnection, base._tlsShutdownFinished, base.connectionLost
    names = set().union(*(m.__code__.co_names for m in made)) | set(vars(base))
    missing = [name for name in _USES if name not in names]
    return f"TLSMemoryBIOProtocol no longer uses {', '.join(missing)}" if missing else None


PATCH = REGISTRY.register(
    Patch(
        "TLS record batching",
        "one transport write per application write and one delivery per read, not one per TLS record",
        relies_on=(  # overridden in BatchedTLS, as in Twisted 26.10 (patches.source_fingerprint)
            Reliance(TLSMemoryBIOProtocol, "_write", "a40fbe73ccc059fb"),
            Reliance(TLSMemoryBIOProtocol, "_flushSendBIO", "9b2043777ab2ef33"),
            Reliance(TLSMemoryBIOProtocol, "_flushReceiveBIO", "2105d14b4edd4c1d"),
        ),
        also_needs=_twisted_names,
    )
)


def applies() -> bool:
    """Twisted's TLS protocol is the one this was written against (checked once, on first use)."""
    if REGISTRY.active(PATCH.name):
        return True
    return REGISTRY.refusal(PATCH.name) is None and REGISTRY.install(PATCH.name)


def disable(why: str = "switched off") -> None:
    """Twisted's own TLS paths from now on, for every connection of this process."""
    REGISTRY.remove(PATCH.name, why)


class BatchedTLS(TLSMemoryBIOProtocol):
    """TLSMemoryBIOProtocol with whole writes and gathered reads (see the module)."""

    def makeConnection(self, transport) -> None:
        if applies() and isinstance(transport, tcp.Connection):
            transport.bufferSize = READ_SIZE
        super().makeConnection(transport)

    def _write(self, data) -> None:
        if not applies():
            return super()._write(data)
        if self._lostTLSConnection:
            return None
        view, done, total = memoryview(data), 0, len(data)
        try:
            while done < total:
                done += self._tlsConnection.send(view[done : done + RECORD])
        except WantReadError:
            self._flushSendBIO(total)
            self._bufferedWrite(bytes(view[done:]))
            return None
        except Error:
            self._tlsShutdownFinished(Failure())  # it flushes what OpenSSL already sealed
            return None
        self._flushSendBIO(total)
        return None

    def _flushSendBIO(self, hint: int = 0) -> None:
        """Everything OpenSSL has sealed, in one transport write."""
        if not applies():
            return super()._flushSendBIO()
        size = max(RECORD_READ, hint + (hint // RECORD + 1) * RECORD_OVERHEAD + 256)
        pieces = []
        while True:
            try:
                pieces.append(self._tlsConnection.bio_read(size))
            except WantReadError:  # the BIO is empty
                break
        if pieces and self.transport is not None:
            self.transport.write(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        return None

    def _flushReceiveBIO(self) -> None:
        if not applies():
            return super()._flushReceiveBIO()
        pieces: list[bytes] = []
        ending: Failure | str | None = None
        while not self._lostTLSConnection:
            try:
                pieces.append(self._tlsConnection.recv(RECORD_READ))
            except WantReadError:  # no complete record left
                break
            except ZeroReturnError:  # close_notify: after the data that came before it
                ending = "close_notify"
                break
            except Error:  # a bad record or an alert: after the data that came before it
                ending = Failure()
                break
        if pieces and not self._aborted:
            ProtocolWrapper.dataReceived(self, pieces[0] if len(pieces) == 1 else b"".join(pieces))
        if ending == "close_notify":
            self._shutdownTLS()
            self._tlsShutdownFinished(None)
        elif isinstance(ending, Failure):
            self._tlsShutdownFinished(ending)
        self._flushSendBIO()
        return None


class BatchedBufferingTLS(BatchedTLS, BufferingTLSTransport):
    """What `wrapClientTLS` uses (small writes gathered for a reactor turn), batched."""


@implementer(interfaces.IStreamClientEndpoint)
class BatchedTLSClientEndpoint:
    """`wrapClientTLS(creator, inner)` with `BatchedBufferingTLS` as the TLS protocol."""

    def __init__(self, creator, inner) -> None:
        self.creator, self.inner = creator, inner

    def connect(self, factory):
        tls = TLSMemoryBIOFactory(self.creator, True, factory)
        tls.protocol = BatchedBufferingTLS
        return self.inner.connect(tls).addCallback(lambda protocol: protocol.wrappedProtocol)
