"""SOCKS5 on the agent's proxy port, and the first-byte sniffing that shares the port.

A SOCKS5 client's first byte is 0x05; an HTTP request starts with a method name. So one
listener serves `curl -x http://...`, `curl --socks5-hostname ...`, git and ssh's
`ProxyCommand nc -X 5 -x ...` alike.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from tunnel.agent import socks
from tunnel.agent.http_front import ProxyFront, ProxySite
from tunnel.opener import bridge
from tunnel.wire.endings import Pipe, no_delay
from tunnel.wire.handover import HandsOver
from tunnel.wire.logs import Throttle
from tunnel.wire.relay import RelayEnd

log = Logger(namespace="fluidity.agent")
_refusals = Throttle()


class Socks5Front(HandsOver):
    """One SOCKS5 client: greeting, CONNECT through the opener, then a byte relay."""

    def __init__(self, site: ProxySite) -> None:
        self.site = site
        self.parser = socks.Socks5Server()
        self.relay: RelayEnd | None = None
        self.finished = False
        self._pending: Deferred[Any] | None = None
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.site.clients += 1
        if self.site.head_timeout:
            self._timer = self.site.clock.callLater(
                self.site.head_timeout, self._close, f"no SOCKS5 request within {self.site.head_timeout:g}s"
            )

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()

    def received(self, data: bytes) -> None:
        if self.finished:
            return
        try:
            for event in self.parser.receive_data(data):
                if isinstance(event, socks.Greeting):
                    answer = self.parser.choose(event)
                    self.transport.write(answer)
                    if answer[1] == socks.NO_ACCEPTABLE_METHOD:
                        self._close("SOCKS5 client offers no method we accept (only no-authentication)")
                        return
                    self.received(b"")  # a request sent with the greeting
                    return
                if isinstance(event, socks.Connect):
                    self._connect(event.destination)
                    return
        except socks.SocksError as e:
            if e.reply is not None:
                self.transport.write(socks.reply(e.reply))
            self._close(str(e))

    def _connect(self, destination) -> None:
        self._disarm()
        self.site.local.busy(self.transport)
        self._pending = bridge(self.site.opener, destination, cast(Pipe, self.transport), self, self.site.endings)
        log.debug("SOCKS5 CONNECT {dest}", dest=destination.authority)

    # -- opener.Front: what the bridge asks of this front ----------------------------
    def accept(self) -> RelayEnd:
        self.transport.write(socks.reply(socks.SUCCEEDED))
        self.relay = RelayEnd(self.site.endings)
        self.relay.makeConnection(self.transport)
        self.hand_over(self.relay)
        if self.parser.trailing:
            self.relay.dataReceived(self.parser.trailing)
        return self.relay

    def refuse(self, error) -> None:
        self.transport.write(socks.reply(socks.reply_for_status(error.status)))
        self._close(error.reason)

    def gone(self) -> bool:
        return self.finished

    def _close(self, why: str) -> None:
        log.debug("SOCKS5 client closed: {why}", why=why)
        self.finished = True
        self.site.endings.close(self.transport)

    def read_ended(self) -> None:
        if not self.finished and self._pending is None:
            self._close("client closed before a request")

    def lost(self, reason) -> None:
        self.finished = True
        self._disarm()
        self.site.clients -= 1


class SniffingFront(HandsOver):
    """Waits for the first byte, then hands the connection to the SOCKS5 or the HTTP front."""

    def __init__(self, site: ProxySite) -> None:
        self.site = site
        self._timer: IDelayedCall | None = None
        self._counted = False

    def connectionMade(self) -> None:
        # Counted from the first moment: idle connections are what exhausts descriptors.
        if not self.site.local.opened(self.transport):
            _refusals.log(
                log.warn,
                "local connections",
                "refusing a local connection: {n} are open, all busy (the descriptor limit less a reserve)",
                n=self.site.local.open,
            )
            self.transport.abortConnection()
            return
        self._counted = True
        if self.site.head_timeout:
            self._timer = self.site.clock.callLater(self.site.head_timeout, self.transport.abortConnection)

    def received(self, data: bytes) -> None:
        if not data:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        front = Socks5Front(self.site) if data[0] == socks.VERSION else ProxyFront(self.site)
        front.makeConnection(self.transport)
        self.hand_over(front)
        front.dataReceived(data)

    # read_ended (inherited): closed before saying anything, so close.

    def lost(self, reason) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._counted:
            self.site.local.closed(self.transport)


class ProxyFactory(Factory):
    noisy = False

    def __init__(self, site: ProxySite) -> None:
        self.site = site

    def buildProtocol(self, addr):
        return SniffingFront(self.site)
