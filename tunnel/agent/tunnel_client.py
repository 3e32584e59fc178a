"""The agent's side of the tunnel: one HTTP/2 connection to the server, kept alive.

Reconnects with exponential backoff and jitter, replaces a connection the server is
draining without waiting for it to close, and opens CONNECT streams on whichever
connection is current. A client that arrives while the tunnel is down is held for
`tunnel_wait`, then told 503 with the last connection error.

With a `locator` (the lifecycle block), the address comes from the control plane: the
server is woken at start, its address asked again after every failed connection, and
when it turns out to be stopped (slept) the client stays idle until the next local
client arrives, which wakes it. Clients are held for up to `wake_timeout` meanwhile.
"""

from __future__ import annotations

from collections import deque

from OpenSSL import SSL
from twisted.application.internet import backoffPolicy
from twisted.internet import defer, error
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from tunnel.agent.client_states import (
    ClientInput,
    ClientMachine,
    ClientState,
    Command,
    Dial,
    DropConnection,
    FailWaiters,
    FindProxy,
    Locate,
    RetryIn,
    ServeWaiters,
)
from tunnel.agent.proxy_choice import ProxyChoice
from tunnel.agent.upstream import UpstreamProxy, route
from tunnel.wire.addresses import Destination
from tunnel.wire.connection import TunnelLimits
from tunnel.wire.interception import intercepted_by, interception_message
from tunnel.wire.mux import TunnelMux, TunnelStream
from tunnel.wire.refusals import OpenFailed
from tunnel.wire.tls_batching import BatchedTLSClientEndpoint

log = Logger(namespace="fluidity.agent")


class TunnelClient:
    """Owns the connection to the server and hands out streams on it: the I/O around a
    `ClientMachine`, which decides each next step (client_states.py)."""

    def __init__(
        self,
        reactor,
        tls_options,
        *,
        host: str,
        port: int,
        connect_timeout: float,
        limits: TunnelLimits,
        reconnect_max_delay: float,
        tunnel_wait: float,
        locator=None,
        upstream_proxy: ProxyChoice | str = "",
        ca_certificate=None,
    ) -> None:
        self.reactor = reactor
        self.tls_options = tls_options
        self.host, self.port = host, port
        self.dns_name = ""  # the server's public DNS name, from the control plane: dialled through a proxy
        self.locator = locator
        self.upstream_proxy = upstream_proxy  # a ProxyChoice, or the configured URL (else $HTTPS_PROXY)
        self.ca_certificate = ca_certificate  # to name what answered instead when verification fails
        self._via = ""
        self._route: IStreamClientEndpoint | None = None
        self._retired = [0, 0]  # traffic of connections that have closed
        self.recent_errors: deque = deque(maxlen=20)  # (time, message), for the status page
        self._proxy: UpstreamProxy | None = None  # the upstream proxy the last attempt went through, if any
        self.connect_timeout = connect_timeout
        self.limits = limits  # each connection's keepalive and probe
        self.tunnel_wait = tunnel_wait
        self.current: TunnelMux | None = None
        self.last_error: str | None = None
        self.connected_since: float | None = None
        self.machine = ClientMachine(
            located=locator is not None,
            backoff=backoffPolicy(initialDelay=0.2, maxDelay=reconnect_max_delay, factor=2.0),
        )
        self._attempt: defer.Deferred | None = None  # the look-up, locate or dial under way
        self._connecting: TunnelMux | None = None  # TCP is up; TLS and the HTTP/2 preface are not yet
        self._retry = None
        self._waiters: list[defer.Deferred[TunnelMux]] = []
        self._all: set[TunnelMux] = set()

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}" if self.host else "(not located yet)"

    @property
    def state(self) -> ClientState:
        return self.machine.state

    @property
    def running(self) -> bool:
        return self.machine.state is not ClientState.STOPPED

    @property
    def asleep(self) -> bool:
        return self.machine.asleep

    @property
    def open_streams(self) -> int:
        return sum(len(m.streams) for m in self._all)

    def streams_by_destination(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for mux in self._all:
            for stream in mux.streams.values():
                counts[stream.destination.authority] = counts.get(stream.destination.authority, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def traffic(self) -> tuple[int, int]:
        """Payload bytes (received from the server, sent to it) since the agent started."""
        return (
            self._retired[0] + sum(m.bytes_received for m in self._all),
            self._retired[1] + sum(m.bytes_sent for m in self._all),
        )

    # -- inputs: what happened, fed to the machine; its commands, carried out --------------
    def start(self) -> None:
        self._feed(ClientInput.START)

    def stop(self) -> defer.Deferred:
        self._feed(ClientInput.STOP)
        self._cancel_attempt()
        self.current, self.connected_since = None, None  # its end is no news to the machine
        closing = [m.closed_deferred for m in self._all if not m.closed]
        for mux in list(self._all):
            mux.close()
        return defer.DeferredList(closing)

    def wake(self) -> None:
        """Find (and wake, if it is stopped) the server now rather than at the next client."""
        if self.running and self.locator is not None:
            self._feed(ClientInput.WAKE_ASKED)

    def network_changed(self) -> None:
        """The laptop's network changed: find the proxy and the server again, at once."""
        if self.running:
            self._feed(ClientInput.NETWORK_CHANGED)

    def _feed(self, what: ClientInput, reason: str = "") -> None:
        commands = self.machine.handle(what, reason=reason, clients_waiting=len(self._waiters))
        if self.machine.state is not ClientState.BACKING_OFF and self._retry is not None and self._retry.active():
            self._retry.cancel()  # a client or the user did not want to wait for it
        for command in commands:
            self._carry_out(command)

    def _carry_out(self, command: Command) -> None:
        if isinstance(command, FindProxy):
            self._find_proxy(command.forced)
        elif isinstance(command, Locate):
            self._locate(command.wake)
        elif isinstance(command, Dial):
            self._dial()
        elif isinstance(command, RetryIn):
            self._retry = self.reactor.callLater(command.seconds, self._feed, ClientInput.RETRY_DUE)
        elif isinstance(command, ServeWaiters):
            self._serve_waiters()
        elif isinstance(command, FailWaiters):
            self._fail_waiters(OpenFailed(503, command.reason))
        elif isinstance(command, DropConnection):
            self._drop_connection()

    def _cancel_attempt(self) -> None:
        """End the look-up, locate or dial under way; what it would have said is not heard."""
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.cancel()
        connecting, self._connecting = self._connecting, None
        if connecting is not None and not connecting.closed:
            connecting.transport.abortConnection()

    def _drop_connection(self) -> None:
        self._cancel_attempt()
        current, self.current = self.current, None
        self.connected_since = None
        if current is not None and not current.closed:
            log.info("the network changed; dropping the tunnel connection to {server}", server=self.server)
            current.transport.abortConnection()

    # -- finding the proxy, the server, and connecting ---------------------------------------
    def _find_proxy(self, forced: bool) -> None:
        refreshing = getattr(self.upstream_proxy, "refresh", None)
        looking = refreshing(self.reactor, force=forced) if refreshing is not None else None
        if looking is None:  # nothing to look up (a named proxy, or looked up recently)
            self._feed(ClientInput.PROXY_FOUND)
            return
        self._attempt = looking  # upstream_proxy: auto is looking for the PAC file: dial after

        def looked(_):
            if self._attempt is looking:
                self._attempt = None
                self._feed(ClientInput.PROXY_FOUND)

        looking.addBoth(looked)

    def _locate(self, wake: bool) -> None:
        locating = self._attempt = self.locator.locate(wake=wake)

        def located(address) -> None:
            if self._attempt is not locating:
                return
            self._attempt = None
            if address is None:
                if not self._waiters:
                    log.info("the server is stopped; the next local client will wake it")
                self._feed(ClientInput.FOUND_ASLEEP)
                return
            self.host, self.port, self.dns_name = address
            self._feed(ClientInput.LOCATED)

        def failed(failure) -> None:
            if self._attempt is not locating:
                return
            self._attempt = None
            message = failure.getErrorMessage()
            self._note_failure(message)
            self._feed(ClientInput.LOCATE_FAILED, message)

        locating.addCallbacks(located, failed)

    def _dial(self) -> None:
        endpoint = BatchedTLSClientEndpoint(self.tls_options, self._tcp_endpoint())
        factory = Factory.forProtocol(
            lambda: TunnelMux(
                client_side=True,
                clock=self.reactor,
                limits=self.limits,
                on_ready=self._ready,
                on_drain=self._draining,
                on_lost=self._lost,
                peer_name=self.server,
            )
        )
        factory.noisy = False
        dialling = self._attempt = endpoint.connect(factory)
        dialling.addTimeout(self.connect_timeout + 1, self.reactor)

        def tcp_up(mux: TunnelMux) -> None:  # TLS and the HTTP/2 preface still have to succeed
            if self._attempt is not dialling:
                mux.transport.abortConnection()
                return
            self._attempt, self._connecting = None, mux
            self._all.add(mux)
            timer = self.reactor.callLater(self.connect_timeout, self._handshake_timeout, mux)
            mux.closed_deferred.addBoth(lambda _: timer.cancel() if timer.active() else None)

        def failed(failure) -> None:
            if self._attempt is not dialling:
                return
            self._attempt = None
            message = self._silence() if failure.check(*_SILENCE) else attempt_message(failure)
            self._note_failure(message)
            self._feed(ClientInput.CONNECT_FAILED, message)

        dialling.addCallbacks(tcp_up, failed)

    def _tcp_endpoint(self):
        endpoint, proxy = route(
            self.reactor, self.upstream_proxy, self.host, self.port, self.connect_timeout, name=self.dns_name
        )
        self._proxy = proxy
        self._via = (
            f" via {proxy.display}" + (f", asked for {self.dns_name} first" if self.dns_name else "") if proxy else ""
        )
        self._route = endpoint
        return endpoint

    def _how_it_went(self) -> str:
        """Which way the tunnel got through: the proxy, and the name or address it was asked for."""
        if self._proxy is None:
            return ""
        used = getattr(self._route, "connected", self._route)
        target = getattr(used, "target", "")
        return f" via {self._proxy.display}" + (f" (CONNECT {target})" if target else "")

    def _silence(self) -> str:
        """No answer at all: a firewall dropping the port looks exactly like this; say what helps."""
        if self._proxy is not None:
            hint = ""
        elif self.port != 443:
            hint = "; networks that filter ports commonly pass only 80 and 443: run the server on 443"
        else:
            hint = (
                "; if this network has a proxy, set upstream_proxy (upstream_proxy: auto finds it the way the "
                "system does)"
            )
        return f"no answer from {self.server}{self._via} in {self.connect_timeout:g}s{hint}"

    def _handshake_timeout(self, mux: TunnelMux) -> None:
        if not mux.peer_ready and not mux.closed:
            self.last_error = f"no TLS/HTTP2 answer from {self.server} in {self.connect_timeout:g}s"
            mux.transport.abortConnection()

    def _note_failure(self, message: str) -> None:
        if message != self.last_error:
            log.warn("tunnel to {server} failed: {error}", server=self.server, error=message)
            self.recent_errors.append((self.reactor.seconds(), message))
        self.last_error = message

    # -- the connection's own news ----------------------------------------------------------
    def _ready(self, mux: TunnelMux) -> None:
        if mux is not self._connecting:  # the agent stopped, or the network changed, meanwhile
            mux.close()
            return
        self._connecting, self.current = None, mux
        self.last_error = None
        self.connected_since = self.reactor.seconds()
        log.info("tunnel to {server} is up{via}", server=self.server, via=self._how_it_went())
        self._feed(ClientInput.READY)

    def _draining(self, mux: TunnelMux) -> None:
        if mux is self.current:
            log.info("server {server} is draining this connection; opening a new one", server=self.server)
            self.current = None
            self.connected_since = None
            self._feed(ClientInput.DRAINING)

    def _lost(self, mux: TunnelMux, reason) -> None:
        self._all.discard(mux)
        self._retired[0] += mux.bytes_received
        self._retired[1] += mux.bytes_sent
        if mux is self._connecting:  # the handshake never finished
            self._connecting = None
            message = self._interception(mux) or _describe(reason)
            self._note_failure(message)
            self._feed(ClientInput.CONNECT_FAILED, message)
        elif mux is self.current:
            self.current = None
            self.connected_since = None
            log.warn("tunnel to {server} lost: {why}", server=self.server, why=_describe(reason))
            self.recent_errors.append((self.reactor.seconds(), f"tunnel lost: {_describe(reason)}"))
            self._feed(ClientInput.LOST)

    def _interception(self, mux: TunnelMux) -> str | None:
        """When the handshake failed on a certificate our CA did not issue, say who did."""
        if self.ca_certificate is None:
            return None
        handle = mux.transport.getHandle()
        if not isinstance(handle, SSL.Connection):
            return None
        try:
            presented = [c.to_cryptography() for c in handle.get_peer_cert_chain() or []]
        except Exception:  # nothing presented: the usual description applies
            return None
        issuer = intercepted_by(presented, self.ca_certificate)
        if issuer is None:
            return None
        return interception_message(issuer, self.server, self._proxy.display if self._proxy is not None else "")

    # -- streams ----------------------------------------------------------------------
    def when_connected(self) -> defer.Deferred[TunnelMux]:
        if self.current is not None and not self.current.closed:
            return defer.succeed(self.current)
        waiter: defer.Deferred[TunnelMux] = defer.Deferred()
        self._waiters.append(waiter)
        locating = self.machine.may_need_waking

        def timed_out(result, timeout):
            if self.locator is not None and self.locator.phase in ("waking", "starting"):
                raise OpenFailed(503, f"the server is still starting: {self.locator.describe()}")
            raise OpenFailed(503, f"tunnel to {self.server} is down: {self.last_error or 'connecting'}")

        waiter.addTimeout(
            self.locator.settings.wake_timeout if locating else self.tunnel_wait,
            self.reactor,
            onTimeoutCancel=timed_out,
        )
        self._feed(ClientInput.CLIENT_WAITS)
        return waiter

    def open(self, destination: Destination, protocol: Protocol, attach_at_once: bool = True) -> defer.Deferred:
        """Fires when the server answers 200. With `attach_at_once`, `protocol` is connected
        as soon as the stream exists (its client was told "connected" and may be writing);
        otherwise only once the server answers, so a connection that dies before the answer
        costs nothing but time: the stream is opened once more on the next connection."""
        if not attach_at_once:
            return _OpenWhenAnswered(self, destination, protocol).start()
        if self.current is not None and not self.current.draining:
            try:
                return self.current.open_stream(destination, protocol).ready
            except OpenFailed as e:
                return defer.fail(e)
        return self.when_connected().addCallback(lambda mux: mux.open_stream(destination, protocol).ready)

    def _serve_waiters(self) -> None:
        current = self.current
        if current is None:  # READY comes with the connection: the I/O side's own mistake
            raise RuntimeError("serving the waiting clients without a connection")
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(current)

    def _fail_waiters(self, error: Exception) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.errback(error)


# An attempt that met silence rather than a refusal.
_SILENCE = (defer.TimeoutError, defer.CancelledError, error.TimeoutError)


class _OpenWhenAnswered:
    """A stream whose protocol is attached when the server answers. When the connection
    carrying it dies first (a probe found it dead, the server went away), nothing of the
    client's has been sent yet, so it is opened again on the next connection, once."""

    def __init__(self, tunnel: TunnelClient, destination: Destination, protocol: Protocol, retries: int = 1) -> None:
        self.tunnel, self.destination, self.protocol, self.retries = tunnel, destination, protocol, retries
        self.result: defer.Deferred = defer.Deferred(self._cancel)
        self._waiting: defer.Deferred | None = None  # for a connection
        self._stream: TunnelStream | None = None  # opened, not yet answered

    def start(self) -> defer.Deferred:
        self._attempt()
        return self.result

    def _attempt(self) -> None:
        current = self.tunnel.current
        # Its streams learn of a lost connection before the client does: closed is not current.
        usable = current is not None and not current.draining and not current.closed
        waiting = defer.succeed(current) if current is not None and usable else self.tunnel.when_connected()
        waiting.addCallback(self._open).addErrback(self._fail)
        self._waiting = None if waiting.called else waiting

    def _open(self, mux: TunnelMux) -> None:
        self._waiting = None
        if self.result.called:
            return
        stream = self._stream = mux.open_stream(self.destination, None)
        stream.ready.addCallbacks(self._answered, self._unanswered, errbackArgs=(mux,))

    def _answered(self, stream) -> None:
        self._stream = None
        if self.result.called:  # the client left meanwhile
            stream.abortConnection()
            return
        stream.attach(self.protocol)
        self.result.callback(stream)

    def _unanswered(self, failure, mux: TunnelMux) -> None:
        self._stream = None
        if self.result.called:
            return
        if mux.closed and self.retries > 0 and self.tunnel.running:
            self.retries -= 1
            log.info(
                "the tunnel connection ended before {dest} was answered; opening it on the next one",
                dest=self.destination.authority,
            )
            self._attempt()
            return
        self.result.errback(failure)

    def _fail(self, failure) -> None:
        self._waiting = None
        if not self.result.called:
            self.result.errback(failure)

    def _cancel(self, _) -> None:
        waiting, stream = self._waiting, self._stream
        self._waiting = self._stream = None
        if waiting is not None and not waiting.called:
            waiting.cancel()
        if stream is not None and not stream.closed:
            stream.abortConnection()


def attempt_message(failure: Failure) -> str:
    """What a failed connection attempt says. Twisted sometimes nests the Failure that ended
    the attempt inside a ConnectError, whose message is then that Failure's repr (it reads
    like a traceback in the log and on the status page): say the nested one's message."""
    value = failure.value
    nested = value.args[0] if isinstance(value, error.ConnectError) and value.args else None
    if isinstance(nested, Failure):
        return f"the connection ended while connecting ({nested.getErrorMessage()})"
    return failure.getErrorMessage()


def _describe(reason) -> str:
    if reason is None:
        return "connection closed"
    message = reason.getErrorMessage()
    value = reason.value
    if type(value).__name__ == "VerificationError":  # service_identity: wrong server_name
        return f"the server certificate does not carry the expected server_name: {value}"
    # pyOpenSSL errors carry a list of (lib, func, reason) tuples: keep the reasons.
    args = getattr(value, "args", ())
    if args and isinstance(args[0], list):
        parts = [str(item[-1]) for item in args[0] if isinstance(item, tuple) and item]
        if parts:
            message = "TLS: " + "; ".join(parts)
    return message
