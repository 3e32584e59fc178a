"""The agent's opener: a stream through the tunnel, answered early where that is safe.

Round trips are what a cloud tunnel costs. A destination the server reached recently is
very likely reachable again, so every front may answer its client at once (CONNECT's
200, SOCKS5's success reply) and the client's first bytes ride right behind the HTTP/2
HEADERS: no round trip added. A first-time destination waits for the server's answer,
so a refusal reaches the client as a readable 403/502/504 or SOCKS5 reply code.
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tunnel.opener import IOpener, as_open_failed
from tunnel.wire.addresses import Destination
from tunnel.wire.logs import Throttle

log = Logger(namespace="fluidity.agent")
_refusals = Throttle()  # one budget for every front's refusals


class KnownDestinations:
    """Destinations the server reached recently (an LRU of authorities)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._seen: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, authority: str) -> bool:
        return authority in self._seen

    def add(self, authority: str) -> None:
        self._seen[authority] = None
        self._seen.move_to_end(authority)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)

    def discard(self, authority: str) -> None:
        self._seen.pop(authority, None)


@implementer(IOpener)
class AgentOpener:
    """Opens streams on the tunnel client's current connection and remembers what worked."""

    name = "tunnel"

    def __init__(self, tunnel, optimistic: bool = True, known: KnownDestinations | None = None) -> None:
        self.tunnel = tunnel  # a TunnelClient: open(destination, protocol), current
        self.optimistic = optimistic
        self.known = known if known is not None else KnownDestinations()

    def answers_early(self, destination: Destination) -> bool:
        current = self.tunnel.current
        return self.optimistic and current is not None and not current.draining and destination.authority in self.known

    def open(self, destination: Destination, protocol):
        # A client told "connected" may be writing: its stream takes the protocol at once.
        # Otherwise it waits for the answer, and a connection found dead meanwhile is retried.
        d = self.tunnel.open(destination, protocol, attach_at_once=self.answers_early(destination))
        d.addCallbacks(self._reached, self._refused, callbackArgs=(destination,), errbackArgs=(destination,))
        return d

    def _reached(self, stream, destination: Destination):
        self.known.add(destination.authority)
        return stream

    def _refused(self, failure, destination: Destination):
        self.known.discard(destination.authority)
        error = as_open_failed(failure)
        if error is not None:
            _refusals.log(
                log.info,
                f"{error.status} {destination.authority}",
                "{dest}: {status} {reason}",
                dest=destination.authority,
                status=error.status,
                reason=error.reason,
            )
            if error is not failure.value:
                return Failure(error)
        return failure
