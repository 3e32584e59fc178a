"""The server's opener: resolve, apply the egress policy to every address, dial a checked one.

The connection goes to the address that was checked, never to a name resolved a
second time, so a DNS answer cannot change between the check and the dial.
"""

from __future__ import annotations

import ipaddress
import socket

from twisted.internet import defer, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import (
    ConnectError,
    ConnectingCancelledError,
    ConnectionRefusedError,
    DNSLookupError,
    TimeoutError,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from tunnel.opener import IOpener
from tunnel.server.egress import EgressDenied, EgressPolicy, IPAddress
from tunnel.wire.addresses import Destination
from tunnel.wire.endings import no_delay
from tunnel.wire.logs import Throttle
from tunnel.wire.refusals import OpenFailed

log = Logger(namespace="fluidity.dialer")
_refusals = Throttle()


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@implementer(IOpener)
class DirectOpener:
    """Opens TCP connections from the server to destinations the policy allows."""

    name = "direct"

    def __init__(self, reactor, policy: EgressPolicy, dial_timeout: float) -> None:
        self.reactor = reactor
        self.policy = policy
        self.dial_timeout = dial_timeout

    def answers_early(self, destination: Destination) -> bool:
        return False  # the agent is told only what the destination said

    def connect(self, ip: str, port: int, protocol: Protocol, timeout: float) -> defer.Deferred:
        endpoint_type = TCP6ClientEndpoint if ":" in ip else TCP4ClientEndpoint
        factory = Factory.forProtocol(lambda: protocol)
        factory.noisy = False
        return endpoint_type(self.reactor, ip, port, timeout=max(timeout, 0.1)).connect(factory)

    def resolve(self, host: str, port: int) -> defer.Deferred:
        def lookup() -> list[str]:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            return list(dict.fromkeys(str(info[4][0]) for info in infos))

        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), lookup)

    @defer.inlineCallbacks
    def _open(self, destination: Destination, protocol: Protocol):
        host, port = destination.host, destination.port
        literal = _literal(host.split("%", 1)[0]) if "%" in host else _literal(host)
        if literal is not None:
            texts = [host]
        else:
            try:
                texts = yield self.resolve(host, port)
            except (socket.gaierror, UnicodeError, DNSLookupError) as e:
                raise OpenFailed(502, f"cannot resolve {host}: {getattr(e, 'strerror', None) or e}") from None
        addresses = [ipaddress.ip_address(t.split("%", 1)[0]) for t in texts]
        try:
            self.policy.check_all(addresses, port)
        except EgressDenied as e:
            _refusals.log(
                log.info, "egress", "egress refused {host}:{port}: {reason}", host=host, port=port, reason=str(e)
            )
            raise OpenFailed(
                403,
                f"egress policy refuses {destination.authority}: {e} (the server's egress_allow setting opens chosen "
                f"ranges)",
            ) from None
        deadline = self.reactor.seconds() + self.dial_timeout
        last_error = "no address"
        for text in texts:
            remaining = deadline - self.reactor.seconds()
            if remaining <= 0:
                break
            log.debug("dialling {host} at {ip}:{port}", host=host, ip=text, port=port)
            try:
                yield self.connect(text, port, protocol, remaining)
                no_delay(protocol.transport)
                return
            except TimeoutError:
                last_error = "timeout"
            except ConnectionRefusedError:
                last_error = "connection refused"
            except ConnectingCancelledError:
                raise defer.CancelledError() from None  # the client left: an ordinary event
            except ConnectError as e:
                last_error = str(e).rstrip(".")
        if last_error == "timeout" or self.reactor.seconds() >= deadline:
            raise OpenFailed(504, f"timed out after {self.dial_timeout:g}s dialling {destination.authority}")
        raise OpenFailed(502, f"cannot connect to {destination.authority}: {last_error}")

    def open(self, destination: Destination, protocol: Protocol) -> defer.Deferred:
        """Fires once `protocol` is connected, or fails with OpenFailed(403/502/504, reason)."""
        d = self._open(destination, protocol)
        # The whole attempt, DNS included, is bounded by dial_timeout.
        timeout = self.dial_timeout + 0.5

        def on_timeout(result, timeout_):
            raise OpenFailed(504, f"timed out after {self.dial_timeout:g}s reaching {destination.authority}")

        d.addTimeout(timeout, self.reactor, onTimeoutCancel=on_timeout)
        return d
