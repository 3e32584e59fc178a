"""A listening service that says where it listens, and fails start-up in one line when it cannot."""

from __future__ import annotations

import errno
import os

from twisted.application import service
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger(namespace="fluidity")


# Twisted's default accept queue is 50: a browser or `hey -c 500` opening hundreds of
# connections at once overflows it, and each dropped SYN costs its client a 1 s (then
# 3 s, 7 s...) retransmission. The kernel caps this at net.core.somaxconn.
BACKLOG = 4096


def tcp_endpoint(reactor, host: str, port: int):
    endpoint_type = TCP6ServerEndpoint if ":" in host else TCP4ServerEndpoint
    return endpoint_type(reactor, port, backlog=BACKLOG, interface=host)


def privileged_port_hint(port: int, error) -> str:
    """Why a port below 1024 was refused, and the ways out, for a process that is not root."""
    if getattr(error, "errno", None) != errno.EACCES or port >= _unprivileged_port_start():
        return ""
    return (
        f" (ports below {_unprivileged_port_start()} need CAP_NET_BIND_SERVICE, which uid {os.getuid()} does not hold "
        f"here;"
        " the server image grants it to its interpreter, so a runtime dropping it (--cap-drop, no-new-privileges) "
        "takes it away:"
        f" keep the capability, lower net.ipv4.ip_unprivileged_port_start to {port}, or choose a port from 1024 up)"
    )


def _unprivileged_port_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1024


class ListenService(service.Service):
    """Listen at start-up (as root, before twistd drops privileges, where it does); a busy
    port is a clear non-zero exit, not a traceback; say where it listens once it does."""

    def __init__(self, endpoint, factory, what: str, host: str, port: int, optional: bool = False) -> None:
        """`optional`: an address this machine may not have (::1 where IPv6 is off) is
        skipped with a warning instead of stopping the process."""
        self.endpoint, self.factory = endpoint, factory
        self.what, self.host, self.port, self.optional = what, host, port, optional
        self.listening: IListeningPort | bool | None = None  # False once listening failed where that may

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        if self.listening is None:
            self._listen()

    def _listen(self) -> None:
        outcome: list = []
        self.endpoint.listen(self.factory).addBoth(outcome.append)  # TCP endpoints answer at once
        result = outcome[0] if outcome else None
        if isinstance(result, Failure):
            error = result.value
            if (
                isinstance(error, CannotListenError)
                and self.optional
                and getattr(error.socketError, "errno", None) in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
            ):
                log.warn(
                    "not listening for {what} on {host}: {error} (this machine has no such address)",
                    what=self.what,
                    host=self.host,
                    error=error.socketError,
                )
                self.listening = False
                return
            if isinstance(error, CannotListenError):
                raise SystemExit(
                    f"fluidity: cannot listen for {self.what} on {self.host}:{self.port}: "
                    f"{error.socketError}{privileged_port_hint(self.port, error.socketError)}"
                ) from None
            result.raiseException()
        if result is None:
            raise SystemExit(f"fluidity: {self.what}: the endpoint did not listen at once")
        self.listening = result
        address = result.getHost()
        log.info(
            "{what} listening on {where}",
            what=self.what,
            where=f"[{address.host}]:{address.port}" if ":" in address.host else f"{address.host}:{address.port}",
        )

    def stopService(self):
        super().stopService()
        listening, self.listening = self.listening, None
        if isinstance(listening, bool) or listening is None:  # False: an optional address this machine lacks
            return None
        return listening.stopListening()
