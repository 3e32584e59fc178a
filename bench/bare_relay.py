"""The ceiling for a two-process Twisted tunnel: the same two hops as Fluidity's agent and
server, doing nothing but relaying (no TLS, no HTTP/2, no checks).

    bare_relay.py connect PORT NEXT_PORT   # HTTP CONNECT hop: answers 200 at once, relays to NEXT_PORT
    bare_relay.py forward PORT TARGET_PORT # plain port forward (twisted.protocols.portforward)

Both use tunnel/wire/eager_write.py, as Fluidity does (BARE_RELAY_WRITES=twisted: Twisted's own).

bench/compare.py chains them (client → connect hop → forward hop → origin) to show what
any design built from two Twisted processes can reach on this machine at best. Loopback only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.protocols import portforward

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tunnel.wire import eager_write


class ConnectHop(portforward.ProxyServer):
    """Reads one CONNECT head, answers 200 without waiting (as the agent does), then relays
    to the next hop; bytes that arrived with the head follow once connected."""

    def connectionMade(self) -> None:
        self.head = b""
        self.early = b""

    def dataReceived(self, data: bytes) -> None:
        if self.head is None:
            if self.peer is None:
                self.early += data
            else:
                self.peer.transport.write(data)
            return
        self.head += data
        if b"\r\n\r\n" not in self.head or len(self.head) > 65536:
            return
        _, self.early = self.head.split(b"\r\n\r\n", 1)
        self.head = None
        self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        client = EarlyBytesClientFactory()
        client.setServer(self)
        reactor.connectTCP("127.0.0.1", self.factory.port, client)


class EarlyBytesClient(portforward.ProxyClient):
    def connectionMade(self) -> None:
        super().connectionMade()
        if self.peer.early:
            self.transport.write(self.peer.early)
            self.peer.early = b""


class EarlyBytesClientFactory(portforward.ProxyClientFactory):
    protocol = EarlyBytesClient


class ConnectFactory(portforward.ProxyFactory):
    protocol = ConnectHop


def main() -> None:
    kind, port, next_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if os.environ.get("BARE_RELAY_WRITES") != "twisted":
        eager_write.install()
    factory = ConnectFactory if kind == "connect" else portforward.ProxyFactory
    for quiet in (ConnectFactory, EarlyBytesClientFactory, portforward.ProxyFactory, portforward.ProxyClientFactory):
        quiet.noisy = False  # a log line per connection is not part of the ceiling
    reactor.listenTCP(port, factory("127.0.0.1", next_port), interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
