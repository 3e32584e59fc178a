"""The seam of the design: a front accepts a client, an opener reaches the destination.

Two openers exist: the agent's (`AgentOpener`: a stream through the tunnel) and the
server's (`dialer.DirectOpener`: a TCP connection, after the egress policy). Four fronts
use them: the agent's HTTP proxy and SOCKS5 front, and the server's HTTP/2 streams and
http/1.1 CONNECT front. Each front only says how it accepts (a 200, a SOCKS5 success
reply, an HTTP/2 200) and how it refuses (a status, a SOCKS5 reply code, a refused
stream); `bridge` does the rest the same way for all four: open, answer, splice, or map
the failure. The agent's absolute-form `http://` forwarding parses both sides rather than
splicing them, so it makes its open with `reach`, the part of `bridge` every open shares:
a client that leaves cancels it, a refusal is answered only to a client still there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, cast

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

from tunnel.wire.addresses import Destination
from tunnel.wire.endings import Endings, Pipe
from tunnel.wire.refusals import OpenFailed
from tunnel.wire.relay import RelayEnd, splice

__all__ = ["Client", "Front", "IOpener", "OpenFailed", "as_open_failed", "bridge", "reach"]

log = Logger(namespace="fluidity")


class IOpener(Interface):
    """Reaches destinations for a front."""

    name = Attribute("what the open goes through, for log lines")

    def open(destination: Destination, protocol: Any) -> defer.Deferred[Any]:
        """Start reaching `destination`; `protocol` is connected to the byte stream when
        it exists (the tunnel's at once where `answers_early` said yes, bytes written
        meanwhile wait; otherwise, like a dial's, once the destination has answered).
        Fires when the destination has answered; fails with OpenFailed, or
        CancelledError when cancelled."""

    def answers_early(destination: Destination) -> bool:
        """Whether a front may tell its client "connected" before `open` fires: only
        where a refusal is unlikely (the tunnel is up and reached it recently)."""


def as_open_failed(failure: Failure) -> OpenFailed | None:
    """The refusal to pass on, or None when the open was cancelled (the client left)."""
    if isinstance(failure.value, defer.CancelledError):
        return None
    if isinstance(failure.value, OpenFailed):
        return failure.value
    log.failure("unexpected error opening a connection", failure)
    return OpenFailed(502, "internal error opening the connection")


class Client(Protocol):
    """What every open needs of the client it is for: whether, and when, it left."""

    def gone(self) -> bool:
        """Whether the client has left (or the front is done with it)."""
        ...

    def when_gone(self, callback: Callable[[], object]) -> None:
        """Call `callback` once the client leaves (at once if it has)."""
        ...


class Front(Client, Protocol):
    """The one contract at the seam: how a front accepts, refuses, and says its client left.

    One per client connection (a TCP client of the agent, an http/1.1 CONNECT, an HTTP/2
    stream of the server)."""

    def accept(self) -> RelayEnd:
        """Send the front's success answer; return the RelayEnd reading the client, with any
        bytes the client sent after its request already fed to it."""
        ...

    def refuse(self, error: OpenFailed) -> None:
        """Answer the refusal the front's way (its protocol's words for `error.status`), and close."""
        ...

    def hold(self) -> None:
        """Pass on nothing the client sends until `release` or `accept`, yet still notice
        it leaving (one that ends its side before it is answered has given up)."""
        ...

    def release(self) -> None:
        """End `hold`: what was kept goes on to whatever reads the client now."""
        ...


class _StreamEnd(RelayEnd):
    """The destination side of a bridge: tells the bridge when its stream exists."""

    def __init__(self, endings: Endings, connected: Callable[[_StreamEnd], None]) -> None:
        super().__init__(endings)
        self._connected = connected

    def connectionMade(self) -> None:
        self._connected(self)

    def pipe(self) -> Pipe:
        """The stream to the destination: an opener fires only once it exists."""
        if self.transport is None:
            raise OpenFailed(502, "internal error: the opener answered before its stream existed")
        return cast(Pipe, self.transport)


def bridge(
    opener: IOpener, destination: Destination, client: Pipe, front: Front, endings: Endings
) -> defer.Deferred[Any]:
    """Open `destination` for a client whose request was parsed, then join the two.

    When the opener answers early, the client is accepted at once and its first bytes wait
    in its RelayEnd until the stream exists (a failure can then only cut the client);
    otherwise the client is held until the destination has answered, and the front
    answers with `accept` or `refuse`. A client that leaves before the two are joined
    cancels the open, whatever the front. `endings` ends either side the way it should.
    Returns the open's Deferred (already handled)."""
    early = opener.answers_early(destination)
    client_end: RelayEnd | None = front.accept() if early else None
    if not early:
        front.hold()

    def stream_exists(end: _StreamEnd) -> None:
        if client_end is not None and not front.gone():
            splice(client, client_end, end.pipe(), end)

    upstream = _StreamEnd(endings, stream_exists)

    def opened() -> None:
        if early:
            return
        if front.gone():
            endings.abort(upstream.pipe())  # the client left before anything was relayed
            return
        splice(client, front.accept(), upstream.pipe(), upstream)
        front.release()

    def refused(error: OpenFailed) -> None:
        if early:
            endings.abort(client)  # it was told "connected": a reset is all that can say it failed
            return
        front.refuse(error)

    return reach(opener, destination, upstream, front, refused, opened)


def reach(
    opener: IOpener,
    destination: Destination,
    protocol: Any,
    client: Client,
    refused: Callable[[OpenFailed], None],
    opened: Callable[[], None] | None = None,
) -> defer.Deferred[Any]:
    """The open every front makes for a client: `protocol` gets the stream, `opened` runs
    once the destination answered, `refused` gets the refusal unless the client has left.
    A client that leaves before `protocol` has its stream cancels the open: nothing it
    sent may reach the destination after it gave up. (Once `protocol` has the stream,
    the front ends that stream the way the client ended.) Returns the open's Deferred,
    already handled."""

    def failed(failure: Failure) -> None:
        error = as_open_failed(failure)
        if error is not None and not client.gone():
            refused(error)

    d = opener.open(destination, protocol)
    d.addCallbacks(lambda _: opened() if opened is not None else None, failed)

    def client_left() -> None:
        if protocol.transport is None and not d.called:
            d.cancel()

    client.when_gone(client_left)
    return d
