"""A listening service that says where it listens, and fails start-up in one line when it cannot."""

from __future__ import annotations

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

log = Logger(namespace="fluidity")


# Twisted's default accept queue is 50: a browser or `hey -c 500` opening hundreds of
# connections at once overflows it, and each dropped SYN costs its client a 1 s (then
# 3 s, 7 s...) retransmission. The kernel caps this at net.core.somaxconn.
BACKLOG = 4096


def tcp_endpoint(reactor, host: str, port: int):
    endpoint_type = TCP6ServerEndpoint if ":" in host else TCP4ServerEndpoint
    return endpoint_type(reactor, port, backlog=BACKLOG, interface=host)


class ListenService(StreamServerEndpointService):
    """Listen at start-up; a busy port is a clear non-zero exit, not a traceback."""

    _raiseSynchronously = True

    def __init__(self, endpoint, factory, what: str, host: str, port: int) -> None:
        super().__init__(endpoint, factory)
        self.what, self.host, self.port = what, host, port

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise SystemExit(f"fluidity: cannot listen for {self.what} on {self.host}:{self.port}: {e.socketError}") from None
        self._waitingForPort.addCallback(self._announce)

    def _announce(self, port):
        address = port.getHost()
        log.info("{what} listening on {host}:{port}", what=self.what, host=address.host, port=address.port)
        return port
