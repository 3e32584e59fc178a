"""Reaching the server through a corporate HTTP proxy: `CONNECT server:8443`, then the
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

import base64
import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import h11
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IAgentEndpointFactory
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from tunnel.wire.addresses import format_authority

MAX_ANSWER_HEAD = 16 * 1024


class UpstreamProxyError(Exception):
    """The proxy refused or broke the CONNECT."""


@dataclass(frozen=True)
class UpstreamProxy:
    host: str
    port: int
    username: str = ""
    password: str = ""

    @property
    def display(self) -> str:
        """For logs: never the password."""
        user = f"{self.username}@" if self.username else ""
        return f"http://{user}{format_authority(self.host, self.port)}"

    def authorization(self) -> bytes | None:
        if not self.username:
            return None
        return b"Basic " + base64.b64encode(f"{self.username}:{self.password}".encode())


def parse_proxy_url(url: str) -> UpstreamProxy:
    """`http://[user:pass@]host[:port]` (port 3128 by default); ValueError otherwise."""
    parts = urlsplit(url.strip() if "://" in url else f"http://{url.strip()}")
    if parts.scheme != "http":
        raise ValueError(f"only http:// upstream proxies are supported, got {parts.scheme}://")
    if not parts.hostname:
        raise ValueError(f"no proxy host in {url!r}")
    try:
        port = parts.port or 3128
    except ValueError:
        raise ValueError(f"bad proxy port in {url!r}") from None
    if parts.path not in ("", "/") or parts.query:
        raise ValueError("an upstream proxy URL has no path or query")
    return UpstreamProxy(parts.hostname, port, unquote(parts.username or ""), unquote(parts.password or ""))


def _bypassed(host: str, no_proxy: str) -> bool:
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if entry == "*" or (entry and (host.lower() == entry.lstrip(".") or host.lower().endswith("." + entry.lstrip(".")))):
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
    """Sends CONNECT, reads the answer, then hands the connection to the real protocol."""

    def __init__(self, factory: Factory, target: str, authorization: bytes | None, done: defer.Deferred) -> None:
        self.wrapped_factory = factory  # (`factory` is set by Factory.buildProtocol)
        self.target = target
        self.authorization = authorization
        self.done = done
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_ANSWER_HEAD)
        self.inner: Protocol | None = None

    def connectionMade(self) -> None:
        headers = [(b"host", self.target.encode()), (b"user-agent", b"fluidity-agent")]
        if self.authorization:
            headers.append((b"proxy-authorization", self.authorization))
        self.transport.write(self.h11.send(h11.Request(method=b"CONNECT", target=self.target.encode(), headers=headers)))

    def dataReceived(self, data: bytes) -> None:
        self.h11.receive_data(data)
        try:
            event = self.h11.next_event()
        except h11.RemoteProtocolError as e:
            return self._fail(f"bad answer from the upstream proxy: {e}")
        if event is h11.NEED_DATA:
            return
        if not isinstance(event, h11.Response) or not 200 <= event.status_code < 300:
            status = getattr(event, "status_code", "?")
            reason = getattr(event, "reason", b"").decode("latin-1", "replace")
            return self._fail(f"upstream proxy refused CONNECT {self.target}: {status} {reason}".rstrip())
        leftover, _ = self.h11.trailing_data
        self.inner = self.wrapped_factory.buildProtocol(self.transport.getPeer())
        # From now on the socket's events go straight to the TLS layer.
        self.dataReceived = self.inner.dataReceived
        self.connectionLost = self.inner.connectionLost
        self.inner.makeConnection(self.transport)
        if not self.done.called:
            self.done.callback(self.inner)
        if leftover:
            self.inner.dataReceived(leftover)

    def _fail(self, message: str) -> None:
        if not self.done.called:
            self.done.errback(UpstreamProxyError(message))
        self.transport.abortConnection()

    def connectionLost(self, reason=None) -> None:
        if not self.done.called:
            self.done.errback(UpstreamProxyError("the upstream proxy closed the connection during CONNECT"))


@implementer(IStreamClientEndpoint)
class HTTPConnectEndpoint:
    def __init__(self, reactor, proxy: UpstreamProxy, host: str, port: int, timeout: float) -> None:
        self.reactor = reactor
        self.proxy = proxy
        self.target = format_authority(host, port)
        self.timeout = timeout

    def connect(self, factory: Factory) -> defer.Deferred:
        done: defer.Deferred = defer.Deferred()
        to_proxy = HostnameEndpoint(self.reactor, self.proxy.host, self.proxy.port, timeout=self.timeout)
        handshake = Factory.forProtocol(lambda: _ConnectHandshake(factory, self.target, self.proxy.authorization(), done))
        connecting = to_proxy.connect(handshake)

        def cancel(_):
            connecting.cancel()
            connecting.addCallback(lambda p: p.transport.abortConnection())
            if not done.called:
                done.errback(defer.CancelledError())

        result = defer.Deferred(cancel)
        connecting.addErrback(lambda f: done.errback(f) if not done.called else None)
        done.chainDeferred(result)
        return result


def route(reactor, configured: str, host: str, port: int, timeout: float, environ=os.environ) -> tuple[IStreamClientEndpoint, UpstreamProxy | None]:
    """How the agent reaches host:port, and the proxy it goes through (None: direct)."""
    proxy = proxy_for(configured, host, environ)
    if proxy is None:
        return HostnameEndpoint(reactor, host, port, timeout=timeout), None
    return HTTPConnectEndpoint(reactor, proxy, host, port, timeout), proxy


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
