"""Reaching the server through a corporate HTTP proxy: `CONNECT server:443`, then the
same mutually-authenticated TLS inside, exactly as without the proxy.

`route` is the one way the agent reaches any host, the tunnel and the control plane
alike: through the same proxy choice (configured, else $HTTPS_PROXY unless $NO_PROXY
covers the host), by CONNECT with the host's name left to the proxy, since such laptops
often cannot resolve names themselves. `ProxiedEndpoints` gives Twisted's HTTP client
that route for every URL.

`HTTPConnectEndpoint` is an `IStreamClientEndpoint`, so the tunnel client wraps it with
`wrapClientTLS` like any other endpoint. The proxy's answer is parsed with h11; anything
but a 2xx fails the connection attempt with the proxy's status and reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import h11
from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from tunnel.agent.proxy_auth import MAX_ROUNDS, ProxyAuthenticator, ProxyAuthError
from tunnel.wire.addresses import format_authority
from tunnel.wire.transports import IConnection

MAX_ANSWER_HEAD = 16 * 1024
log = Logger(namespace="fluidity.agent")


class UpstreamProxyError(Exception):
    """The proxy refused or broke the CONNECT."""


@dataclass(frozen=True)
class UpstreamProxy:
    host: str
    port: int
    username: str = ""
    password: str = ""
    tls: bool = False  # an https:// proxy: TLS to the proxy, then CONNECT inside it
    # Why this proxy may not have credentials (found by the agent, not on the allowed list); "" when it may.
    credentials_withheld: str = ""

    @property
    def display(self) -> str:
        """For logs: never the password."""
        user = f"{self.username}@" if self.username else ""
        return f"{'https' if self.tls else 'http'}://{user}{format_authority(self.host, self.port)}"


def parse_proxy_url(url: str) -> UpstreamProxy:
    """`http://[user:pass@]host[:port]` (port 3128 by default) or `https://...` (TLS to the
    proxy, port 443 by default); ValueError otherwise."""
    try:
        parts = urlsplit(url.strip() if "://" in url else f"http://{url.strip()}")
    except ValueError as e:  # unbalanced brackets, a bracketed host that is no IP
        raise ValueError(f"bad proxy URL {url!r}: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"only http:// and https:// upstream proxies are supported, got {parts.scheme}://")
    if not parts.hostname:
        raise ValueError(f"no proxy host in {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 3128)
    except ValueError:
        raise ValueError(f"bad proxy port in {url!r}") from None
    if parts.path not in ("", "/") or parts.query:
        raise ValueError("an upstream proxy URL has no path or query")
    return UpstreamProxy(
        parts.hostname, port, unquote(parts.username or ""), unquote(parts.password or ""), tls=parts.scheme == "https"
    )


def _bypassed(host: str, no_proxy: str) -> bool:
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if entry == "*" or (
            entry and (host.lower() == entry.lstrip(".") or host.lower().endswith("." + entry.lstrip(".")))
        ):
            return True
    return False


def proxy_for(configured: str, server_host: str, environ=os.environ) -> UpstreamProxy | None:
    """The configured proxy, else $HTTPS_PROXY (unless $NO_PROXY covers the server)."""
    if configured:
        return parse_proxy_url(configured)
    url = environ.get("HTTPS_PROXY") or environ.get("https_proxy") or ""
    if not url or _bypassed(server_host, environ.get("NO_PROXY") or environ.get("no_proxy") or ""):
        return None
    return parse_proxy_url(url)


class _ConnectHandshake(Protocol):
    """Sends CONNECT, answers the proxy's authentication challenges (on this connection
    while the proxy keeps it, else on a new one), then hands the connection to the real
    protocol once the proxy says 2xx."""

    transport: IConnection  # set by makeConnection, before any method here runs

    def __init__(self, attempt: _Attempt, authorization: str | None) -> None:
        self.attempt = attempt
        self.authorization = authorization
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_ANSWER_HEAD)
        self.inner: IProtocol | None = None
        self._refusal: h11.Response | None = None
        self._handed_on = False  # it asked for a new connection: its close is expected

    def connectionMade(self) -> None:
        self._send_connect()

    def _send_connect(self) -> None:
        target = self.attempt.target
        headers = [(b"host", target.encode()), (b"user-agent", b"fluidity-agent")]
        if self.authorization:
            headers.append((b"proxy-authorization", self.authorization.encode()))
        self.transport.write(self.h11.send(h11.Request(method=b"CONNECT", target=target.encode(), headers=headers)))
        self.h11.send(h11.EndOfMessage())

    def dataReceived(self, data: bytes) -> None:
        self.h11.receive_data(data)
        self._process()

    def _process(self) -> None:
        while self.inner is None and not self._handed_on:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                return self._fail(f"bad answer from the upstream proxy: {e}")
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Response) and 200 <= event.status_code < 300:
                return self._connected()
            if isinstance(event, h11.Response):
                self._refusal = event
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return self._refused(self._refusal)

    def _connected(self) -> None:
        leftover, _ = self.h11.trailing_data
        inner = self.inner = self.attempt.factory.buildProtocol(self.transport.getPeer())
        if inner is None:
            return self._fail("the tunnel's factory built no protocol")
        # From now on the socket's events go straight to the TLS layer: no call in between.
        self.dataReceived = inner.dataReceived  # type: ignore[method-assign]
        self.connectionLost = inner.connectionLost  # type: ignore[method-assign,assignment]
        inner.makeConnection(self.transport)
        auth = self.attempt.auth
        if self.authorization and auth.scheme:
            log.info(
                "authenticated to the upstream proxy with {scheme} as {user}",
                scheme={"ntlm": "NTLM"}.get(auth.scheme, auth.scheme.capitalize()),
                user=auth.username or "the logged-in user",
            )
        self.attempt.succeeded(inner)
        if leftover:
            inner.dataReceived(leftover)

    def _refused(self, response: h11.Response | None) -> None:
        status = getattr(response, "status_code", "?")
        reason = getattr(response, "reason", b"").decode("latin-1", "replace")
        refused = f"upstream proxy refused CONNECT {self.attempt.target}: {status} {reason}".rstrip()
        challenges = [
            v.decode("latin-1")
            for n, v in (response.headers if response is not None else [])
            if n == b"proxy-authenticate"
        ]
        if status not in (401, 407) or not challenges:
            return self._fail(refused + port_hint(status, self.attempt.port))
        try:
            header = self.attempt.auth.answer(challenges, "CONNECT", self.attempt.target)
        except ProxyAuthError as e:
            return self._fail(f"{refused}: {e}")
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()  # the proxy keeps the connection: answer on it
            self._refusal = None
            self.authorization = header
            self._send_connect()
            return
        self.attempt.auth.restart()
        if self.attempt.auth.scheme is None:  # a connection-bound handshake begins again there
            try:
                header = self.attempt.auth.answer(challenges, "CONNECT", self.attempt.target)
            except ProxyAuthError as e:
                return self._fail(f"{refused}: {e}")
        self._handed_on = True
        self.attempt.again(header)
        self.transport.loseConnection()

    def _fail(self, message: str) -> None:
        self.attempt.failed(UpstreamProxyError(message))
        self.transport.abortConnection()

    def connectionLost(self, reason=None) -> None:
        if self._refusal is not None and not self._handed_on:  # a refusal whose body ends with the connection
            self.h11.receive_data(b"")
            self._process()
        if not self._handed_on:
            tls = _tls_reasons(reason) if self.attempt.endpoint.proxy.tls else ""
            if tls:
                hint = (
                    "; set upstream_proxy_ca to the CA that issued the proxy's certificate" if "verify" in tls else ""
                )
                self.attempt.failed(
                    UpstreamProxyError(
                        f"TLS to the upstream proxy {self.attempt.endpoint.proxy.display} failed: {tls}{hint}"
                    )
                )
                return
            self.attempt.failed(UpstreamProxyError("the upstream proxy closed the connection during CONNECT"))


def _tls_reasons(reason) -> str:
    """OpenSSL's reasons from a failed TLS connection ("certificate verify failed"), or ""."""
    value = getattr(reason, "value", None)
    args = getattr(value, "args", ())
    if not isinstance(value, SSL.Error) or not args or not isinstance(args[0], list):
        return ""
    return "; ".join(str(item[-1]) for item in args[0] if isinstance(item, tuple) and item)


def port_hint(status, port: int) -> str:
    """A proxy refusing a CONNECT to any port but 443 is a stock squid's rule (SSL_ports)."""
    if status in (403, 405) and port != 443:
        return (
            f"; this proxy most likely allows CONNECT to port 443 only (a stock squid's SSL_ports rule), not {port}:"
            " move the server to 443, the stack's default (`pulumi config set containerPort 443`, `pulumi up`),"
            " and set server_port: 443 in the agent's config"
        )
    return ""


class _Attempt:
    """One CONNECT through the proxy, over as many proxy connections as authentication needs."""

    def __init__(self, endpoint: HTTPConnectEndpoint, factory: IProtocolFactory) -> None:
        self.endpoint, self.factory = endpoint, factory
        self.target, self.port = endpoint.target, endpoint.port
        self.auth = ProxyAuthenticator.for_proxy(endpoint.proxy)
        self.done: defer.Deferred = defer.Deferred()
        self.connecting: defer.Deferred | None = None
        self._connections = 0

    def start(self, authorization: str | None) -> None:
        self._connections += 1
        if self._connections > MAX_ROUNDS + 1:
            return self.failed(
                UpstreamProxyError(
                    f"upstream proxy kept closing the connection during authentication for CONNECT {self.target}"
                )
            )
        to_proxy: IStreamClientEndpoint = HostnameEndpoint(
            self.endpoint.reactor, self.endpoint.proxy.host, self.endpoint.proxy.port, timeout=self.endpoint.timeout
        )
        tls = self.endpoint.proxy_tls if self.endpoint.proxy.tls else None  # an https:// proxy
        if tls is not None:
            to_proxy = wrapClientTLS(tls, to_proxy)
        self.connecting = to_proxy.connect(Factory.forProtocol(lambda: _ConnectHandshake(self, authorization)))
        self.connecting.addErrback(self.failed)

    def again(self, authorization: str) -> None:
        """Authenticate on a new connection (the proxy closes this one)."""
        self.endpoint.reactor.callLater(0, lambda: None if self.done.called else self.start(authorization))

    def succeeded(self, protocol) -> None:
        if not self.done.called:
            self.done.callback(protocol)

    def failed(self, failure) -> None:
        if not self.done.called:
            self.done.errback(failure)


@implementer(IStreamClientEndpoint)
class HTTPConnectEndpoint:
    def __init__(self, reactor, proxy: UpstreamProxy, host: str, port: int, timeout: float, proxy_tls=None) -> None:
        self.reactor = reactor
        self.proxy = proxy
        # An https:// proxy's certificate is checked for its name, against the system's
        # trust store unless the choice names a CA (upstream_proxy_ca).
        self.proxy_tls = (
            proxy_tls if proxy_tls is not None else (optionsForClientTLS(proxy.host) if proxy.tls else None)
        )
        self.target = format_authority(host, port)
        self.port = port
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"CONNECT {self.target} through {self.proxy.display}"

    def connect(self, factory: IProtocolFactory) -> defer.Deferred:
        attempt = _Attempt(self, factory)
        attempt.start(None)  # challenge-driven: credentials go only in answer to what the proxy asks

        def cancel(_):
            if attempt.connecting is not None:
                attempt.connecting.cancel()
                attempt.connecting.addCallback(lambda p: p.transport.abortConnection())
            if not attempt.done.called:
                attempt.done.errback(defer.CancelledError())

        result: defer.Deferred = defer.Deferred(cancel)
        attempt.done.chainDeferred(result)
        return result


def route(
    reactor, configured, host: str, port: int, timeout: float, environ=os.environ, name: str = ""
) -> tuple[IStreamClientEndpoint, UpstreamProxy | None]:
    """How the agent reaches host:port, and the proxy it goes through (None: direct).

    `configured` is the upstream_proxy setting, or a `ProxyChoice` (which also knows
    `auto`: the platform's PAC file). `name`, when given, is host's DNS name: a proxy is
    asked to CONNECT to it rather than to the bare address (category filters refuse or
    flag raw IPs, and the proxy resolves names for laptops that cannot), while a direct
    dial keeps the address and needs no DNS. A bypass covering either one means direct."""
    choose = getattr(configured, "choose", None)
    if choose is None:
        proxy = proxy_for(configured, host, environ)
        if proxy is not None and name and not configured and proxy_for(configured, name, environ) is None:
            proxy = None
        proxy_tls = None
    else:
        proxy = choose(name or host, port)[0]
        if proxy is not None and name and choose(host, port)[0] is None:
            proxy = None
        proxy_tls = configured.proxy_tls(proxy) if proxy is not None and proxy.tls else None
    if proxy is None:
        return HostnameEndpoint(reactor, host, port, timeout=timeout), None
    by_address = HTTPConnectEndpoint(reactor, proxy, host, port, timeout, proxy_tls)
    if not name or name == host:
        return by_address, proxy
    # A proxy that cannot resolve the name (a split-horizon resolver) may still take the address.
    return FirstThatConnects([HTTPConnectEndpoint(reactor, proxy, name, port, timeout, proxy_tls), by_address]), proxy


@implementer(IStreamClientEndpoint)
class FirstThatConnects:
    """Each endpoint in turn until one connects; the last one's failure says why, after the others'."""

    def __init__(self, endpoints: list) -> None:
        self.endpoints = endpoints
        self.connected = None  # the endpoint that last connected

    def connect(self, factory):
        reasons: list[str] = []

        def connected(protocol, endpoint):
            self.connected = endpoint
            return protocol

        def attempt(index: int):
            d = self.endpoints[index].connect(factory)
            d.addCallback(connected, self.endpoints[index])
            if index + 1 < len(self.endpoints):
                d.addErrback(next_one, index)
            elif reasons:
                d.addErrback(
                    lambda failure: (
                        defer.fail(UpstreamProxyError(f"{'; '.join(reasons)}; then {failure.getErrorMessage()}"))
                        if not failure.check(defer.CancelledError)
                        else failure
                    )
                )
            return d

        def next_one(failure, index: int):
            if failure.check(defer.CancelledError):
                return failure
            reasons.append(failure.getErrorMessage())
            log.info("{why}; trying {next}", why=reasons[-1], next=self.endpoints[index + 1])
            return attempt(index + 1)

        return attempt(0)


@implementer(IAgentEndpointFactory)
class ProxiedEndpoints:
    """For twisted.web's Agent: each request's connection takes `route`, then TLS for https."""

    def __init__(self, reactor, configured: str, timeout: float, tls_policy=None, environ=os.environ) -> None:
        self.reactor, self.configured, self.timeout, self.environ = reactor, configured, timeout, environ
        self.tls_policy = tls_policy or BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri):
        host = uri.host.decode("ascii")
        endpoint, _ = route(self.reactor, self.configured, host, uri.port, self.timeout, self.environ)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self.tls_policy.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint
