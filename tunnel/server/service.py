"""The server: accepts mutually-authenticated TLS 1.3 connections and tunnels CONNECTs.

After the handshake, ALPN picks the framing: `h2` gets the HTTP/2 multiplexer (the
agent), `http/1.1` a single CONNECT (curl `--proxy https://` with a client
certificate). Both ask the same `DirectOpener`, which applies the egress policy.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import h11
from OpenSSL.crypto import X509
from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from tunnel.config import ServerSettings
from tunnel.opener import bridge
from tunnel.server.dialer import DirectOpener
from tunnel.server.preauth import HandshakeBudget
from tunnel.server.revocation import RevocationList
from tunnel.wire import descriptors
from tunnel.wire.addresses import BadAddress, parse_authority
from tunnel.wire.connection import TunnelLimits
from tunnel.wire.endings import Endings, socket_under
from tunnel.wire.http11_front import HttpFront
from tunnel.wire.logs import Throttle
from tunnel.wire.mux import TunnelMux, TunnelStream
from tunnel.wire.refusals import OpenFailed
from tunnel.wire.relay import RelayEnd
from tunnel.wire.tls import ALPN_H2
from tunnel.wire.tls_batching import BatchedTLS
from tunnel.wire.transports import IConnection, ITLSConnection

log = Logger(namespace="fluidity.server")
_refusals = Throttle()

HEAD_TIMEOUT = 30.0  # the one CONNECT of an http/1.1 client


class ConnectFront(HttpFront):
    """HTTP/1.1 over TLS: one CONNECT, answered 200/403/502/504, then a byte relay."""

    def __init__(self, server: TunnelServer, peer_name: str) -> None:
        super().__init__(server.endings, HEAD_TIMEOUT)
        self.server = server
        self.peer_name = peer_name

    def handle_event(self, event) -> None:
        if isinstance(event, h11.Request):
            if event.method != b"CONNECT":
                self.fail(
                    405,
                    "this server only tunnels CONNECT requests: use it as a proxy that tunnels (curl --proxy "
                    "https://SERVER --proxytunnel, or any HTTPS-proxy client)",
                    (("Allow", "CONNECT"),),
                )
                return
            try:
                destination = parse_authority(event.target)
            except BadAddress as e:
                self.fail(400, str(e))
                return
            full = self.server.out_of_descriptors()
            if full:
                self.fail(503, full)
                return
            bridge(self.server.opener, destination, self.transport, self, self.server.endings)
            log.debug("{peer} CONNECT {dest} (http/1.1)", peer=self.peer_name, dest=destination.authority)

    # -- opener.Front: what the bridge asks of this front (it cancels the dial if we go) --
    def accept(self) -> RelayEnd:
        return self.accept_switch(
            None, None, h11.Response(status_code=200, headers=[], reason=b"Connection established")
        )

    def refuse(self, error) -> None:
        self.fail(error.status, error.reason)


@implementer(IHandshakeListener)
class ServerConnection(Protocol):
    """Waits for the TLS handshake, then hands the connection to the framing ALPN chose."""

    transport: ITLSConnection  # set by makeConnection, before any method here runs

    def __init__(self, server: TunnelServer) -> None:
        self.server = server
        self.inner: Protocol | None = None
        self.peer_name = "?"
        self.certificate: X509 | None = None
        self.authenticated = False  # handshake done, certificate accepted, within max_connections
        self._handshake_timer = None

    def connectionMade(self) -> None:
        self.server.connections.add(self)
        self.server.admit(self)
        self._handshake_timer = self.server.reactor.callLater(
            self.server.handshake_timeout, self.transport.abortConnection
        )

    def handshakeCompleted(self) -> None:
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self.server.handshakes.forget(self)
        offered = self.transport.getPeerCertificate()
        cert = self.certificate = offered if isinstance(offered, X509) else None
        common_name = (cert.get_subject().CN if cert is not None else None) or "?"
        address = self.transport.getPeer()
        self.peer_name = f"{common_name}@{getattr(address, 'host', '?')}"
        if cert is not None and self.server.revocations.revoked(cert):
            log.warn(
                "refusing {peer}: certificate serial {serial:x} is revoked",
                peer=self.peer_name,
                serial=cert.get_serial_number(),
            )
            self.transport.abortConnection()
            return
        if self.server.authenticated >= self.server.max_connections:
            _refusals.log(
                log.warn,
                "max_connections",
                "refusing {peer}: max_connections ({n}) reached",
                peer=self.peer_name,
                n=self.server.max_connections,
            )
            self.transport.abortConnection()
            return
        self.authenticated = True
        if self.transport.negotiatedProtocol == ALPN_H2:
            self.inner = self.server.make_mux(self.peer_name, common_name)
            log.info(
                "agent {peer} connected (h2); {n} agent connection(s) open",
                peer=self.peer_name,
                n=self.server.authenticated,
            )
        else:
            self.inner = ConnectFront(self.server, self.peer_name)
        self.inner.makeConnection(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)

    def connectionLost(self, reason=None) -> None:
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self.server.handshakes.forget(self)
        self.server.forget(self)
        if isinstance(self.inner, TunnelMux):
            log.info("agent {peer} disconnected", peer=self.peer_name)
        elif self.inner is None and reason is not None:
            log.debug(
                "TLS handshake from {peer} failed: {why}",
                peer=getattr(self.transport.getPeer(), "host", "?"),
                why=reason.getErrorMessage(),
            )
        if self.inner is not None:
            self.inner.connectionLost(reason)

    def begin_drain(self) -> None:
        if isinstance(self.inner, TunnelMux):
            self.inner.begin_drain()
        elif self.inner is None:
            self.transport.abortConnection()


class Refused(Protocol):
    """A connection the server will not take: dropped at once."""

    transport: IConnection

    def connectionMade(self) -> None:
        self.transport.abortConnection()


class SpeakingTLS(BatchedTLS):
    """Twisted's TLS protocol (records batched: `tls_batching`), telling the server when a peer sends its first bytes: a
    connection that never speaks is the first to go when unauthenticated ones crowd in."""

    _spoke = False

    def dataReceived(self, data: bytes) -> None:
        if not self._spoke and data:
            self._spoke = True
            self.factory.wrappedFactory.handshakes.spoke(self.wrappedProtocol)
        super().dataReceived(data)


def _bytes_waiting(connection: ServerConnection) -> bool:
    """Whether a connection's first bytes sit unread in its socket (peeked, not taken)."""
    sock = socket_under(connection.transport)
    if sock is None:
        return False
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)))
    except (BlockingIOError, InterruptedError):
        return False  # nothing there yet
    except OSError:
        return False  # reset or closed: as good as silent


def tls_factory(tls, server: TunnelServer) -> TLSMemoryBIOFactory:
    """What the listener runs: TLS around the tunnel server, noticing first bytes."""
    factory = TLSMemoryBIOFactory(tls, False, server)
    factory.protocol = SpeakingTLS
    factory.noisy = False
    return factory


class StreamFront:
    """The server's HTTP/2 front for one CONNECT stream (`opener.Front`): a 200 to accept,
    a status with its Proxy-Status reason to refuse."""

    def __init__(self, mux: TunnelMux, stream: TunnelStream, endings: Endings) -> None:
        self.mux, self.stream, self.endings = mux, stream, endings

    def accept(self) -> RelayEnd:
        here = RelayEnd(self.endings)
        self.stream.attach(here)  # what the agent sent while we dialled waits in `here`
        self.mux.respond(self.stream)
        return here

    def refuse(self, error: OpenFailed) -> None:
        self.mux.refuse(self.stream, error.status, error.reason)

    def gone(self) -> bool:
        return self.stream.closed or self.mux.terminated or self.mux.closed

    def when_gone(self, callback: Callable[[], object]) -> None:
        self.stream.when_closed(callback)

    def hold(self) -> None:
        self.stream.pauseProducing()  # flow control: a reset from the agent still arrives

    def release(self) -> None:
        self.stream.resumeProducing()


class TunnelServer(Factory):
    """Builds connections, bounds those still in their handshake, counts agents against
    max_connections, drains on stop."""

    noisy = False

    def __init__(
        self,
        reactor,
        opener: DirectOpener,
        settings: ServerSettings,
        revocations: RevocationList | None = None,
    ) -> None:
        self.reactor = reactor
        self.endings = Endings(reactor)  # closes and aborts, their timers on this reactor
        self.opener = opener
        self.max_connections = settings.max_connections
        self.handshake_timeout = settings.handshake_timeout
        self.handshakes: HandshakeBudget[ServerConnection] = HandshakeBudget(
            settings.max_handshakes, settings.max_handshakes_per_source
        )
        self.max_streams_per_agent = settings.max_streams_per_agent
        self.limits = TunnelLimits.of(settings, client_side=False)  # each agent connection's streams and keepalive
        # Not `revocations or ...`: an empty list (every operator's first) is still the file to watch.
        self.revocations = revocations if revocations is not None else RevocationList("")
        self.connections: set[ServerConnection] = set()
        self.stopping = False
        self._drained: defer.Deferred | None = None
        self.last_activity = reactor.seconds()
        total = descriptors.capacity(reactor)
        # Kept back for handshakes, agents' connections, the listener and logs: streams
        # (one dial each) never take the descriptors that let agents in.
        self.descriptor_budget = total - descriptors.reserve_for(total, 64 + settings.max_handshakes)

    def buildProtocol(self, addr):
        # Under TLS a None here would leave the TLS wrapper without a protocol: refuse explicitly.
        if self.stopping:
            return Refused()
        return ServerConnection(self)

    def admit(self, connection: ServerConnection) -> None:
        """Count a connection into the handshake budget, dropping the ones it displaces."""
        source = getattr(connection.transport.getPeer(), "host", "?")
        for victim in self.handshakes.admit(connection, source, _bytes_waiting):
            victim.transport.abortConnection()
        evicted = self.handshakes.evicted
        if evicted and evicted & (evicted - 1) == 0:  # 1, 2, 4, 8...: a flood is one line per doubling
            log.warn(
                "{n} connection(s) dropped so far to make room for new handshakes (latest from {source})",
                n=evicted,
                source=source,
            )

    @property
    def authenticated(self) -> int:
        return sum(1 for c in self.connections if c.authenticated)

    @property
    def agents(self) -> int:
        return sum(1 for c in self.connections if isinstance(c.inner, TunnelMux))

    def check_revocations(self) -> None:
        """Re-read the deny list if it changed, and close connections it now names."""
        if not self.revocations.refresh():
            return
        for connection in list(self.connections):
            if self.revocations.revoked(connection.certificate):
                log.warn("closing {peer}: its certificate was revoked", peer=connection.peer_name)
                connection.transport.abortConnection()

    def _muxes(self):
        return (c.inner for c in self.connections if isinstance(c.inner, TunnelMux))

    def agents_by_identity(self) -> dict[str, int]:
        """Connected agents per certificate CN: many agents may share one server."""
        counts: dict[str, int] = {}
        for mux in self._muxes():
            counts[mux.identity] = counts.get(mux.identity, 0) + 1
        return counts

    def out_of_descriptors(self) -> str:
        """Why a new dial must be refused for want of descriptors, or '' while there are enough."""
        in_use = 2 * len(self.connections) + sum(len(m.streams) for m in self._muxes())
        if in_use < self.descriptor_budget:
            return ""
        return f"the server is at its open-file budget ({self.descriptor_budget} of its descriptor limit); retry later"

    def streams_of(self, identity: str) -> int:
        return sum(len(m.streams) for m in self._muxes() if m.identity == identity)

    @property
    def activity(self) -> float:
        """When bytes last arrived from an agent, or one connected or opened a stream."""
        return max([self.last_activity] + [m.last_activity for m in self._muxes()])

    def make_mux(self, peer_name: str, identity: str) -> TunnelMux:
        self.last_activity = self.reactor.seconds()
        mux = TunnelMux(
            client_side=False,
            clock=self.reactor,
            on_stream=self._on_stream,
            limits=self.limits,
            peer_name=peer_name,
        )
        mux.identity = identity
        return mux

    def _on_stream(self, stream: TunnelStream) -> None:
        mux = stream.mux
        self.last_activity = self.reactor.seconds()
        limit = self.max_streams_per_agent
        if limit and self.streams_of(mux.identity) > limit:  # this stream is already counted
            _refusals.log(
                log.info,
                f"streams of {mux.identity}",
                "{peer}: refusing a stream, {n} open (max_streams_per_agent)",
                peer=mux.peer_name,
                n=limit,
            )
            mux.refuse(stream, 429, f"agent {mux.identity} already has {limit} streams open (max_streams_per_agent)")
            return
        full = self.out_of_descriptors()
        if full:
            _refusals.log(log.warn, "descriptors", "{peer}: refusing a stream: {why}", peer=mux.peer_name, why=full)
            mux.refuse(stream, 503, full)
            return
        log.debug("{peer} CONNECT {dest}", peer=mux.peer_name, dest=stream.destination.authority)

        bridge(self.opener, stream.destination, stream, StreamFront(mux, stream, self.endings), self.endings)

    def forget(self, connection: ServerConnection) -> None:
        if isinstance(connection.inner, TunnelMux):  # keep its activity once it is gone
            self.last_activity = max(self.last_activity, connection.inner.last_activity)
        self.connections.discard(connection)
        if self._drained is not None and not self.connections and not self._drained.called:
            self._drained.callback(None)

    def drain(self, timeout: float) -> defer.Deferred:
        """Stop taking streams, let open ones finish for up to `timeout`, then cut the rest."""
        self.stopping = True
        if not self.connections:
            return defer.succeed(None)
        log.info("draining {n} connection(s) for up to {t:g}s", n=len(self.connections), t=timeout)
        self._drained = defer.Deferred()
        for connection in list(self.connections):
            connection.begin_drain()

        def cut():
            for connection in list(self.connections):
                connection.transport.abortConnection()

        timer = self.reactor.callLater(timeout, cut)
        self._drained.addBoth(lambda _: timer.cancel() if timer.active() else None)
        return self._drained
