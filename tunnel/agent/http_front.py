"""The agent's local HTTP proxy: CONNECT, absolute-form `http://` requests, WebSocket
upgrades and `GET /health`, each tunnelled through one HTTP/2 stream.

A CONNECT goes through `opener.bridge` like every front's (answered early where the
agent's opener says so); absolute-form requests are opened with `opener.reach`, the same
open (cancelled if the client leaves first, refusals mapped in one place), and wait in
their link until the stream exists. The front knows the agent only through a `ProxySite`: the opener, the clock
and limits, and the agent's own pages (/health, /proxy.pac).
"""

from __future__ import annotations

import hmac
import json
import typing
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import h11
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from tunnel.agent.status_page import render as render_status
from tunnel.opener import IOpener, OpenFailed, bridge, reach
from tunnel.wire.addresses import BadAddress, Destination, HttpTarget, parse_authority, parse_http_url
from tunnel.wire.descriptors import LocalConnections
from tunnel.wire.endings import Endings, arm, ended_cleanly
from tunnel.wire.http11_front import HttpFront
from tunnel.wire.mux import TunnelStream
from tunnel.wire.refusals import http_status
from tunnel.wire.relay import RelayEnd

log = Logger(namespace="fluidity.agent")

HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authorization",
    b"proxy-authenticate",
    b"te",
    b"trailer",
    b"upgrade",
}


def _connection_tokens(headers) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return tokens


def forwardable(headers, keep_upgrade: bool) -> list[tuple[bytes, bytes]]:
    """Drop hop-by-hop headers (RFC 9110 §7.6.1); keep an agreed Upgrade."""
    named = _connection_tokens(headers)
    out = [(n, v) for n, v in headers if n not in HOP_BY_HOP and n not in named]
    if keep_upgrade:
        out += [(n, v) for n, v in headers if n == b"upgrade"]
        out.append((b"connection", b"Upgrade"))
    return out


def wants_upgrade(request: h11.Request) -> bool:
    return b"upgrade" in _connection_tokens(request.headers) and any(n == b"upgrade" for n, _ in request.headers)


class AgentPages(typing.Protocol):
    """What the agent answers itself; `Agent` implements it."""

    csrf: str  # the status page's buttons carry it: their proof of origin

    def serves_host(self, host_header: str) -> bool: ...
    def health(self) -> dict: ...
    def status(self, address: str) -> dict: ...
    def act(self, action: str) -> None: ...
    def pac(self, requested_host: str) -> str: ...


@dataclass
class ProxySite:
    """Everything the agent's fronts use: they never see the Agent itself."""

    clock: IReactorTime
    opener: IOpener
    pages: AgentPages
    head_timeout: float = 60.0
    max_header_bytes: int = 65536
    clients: int = 0  # local client connections open now, past the first byte
    local: LocalConnections = field(default_factory=lambda: LocalConnections(1 << 20))
    endings: Endings = field(init=False)  # every front's closes and aborts, on this site's clock

    def __post_init__(self) -> None:
        self.endings = Endings(self.clock)


@implementer(IHalfCloseableProtocol)
class OriginLink(Protocol):
    """A tunnel stream to one origin carrying absolute-form requests, parsed with h11."""

    transport: TunnelStream | None  # None until the stream exists
    stream: TunnelStream  # the same, for what runs only once it does

    def __init__(self, front: ProxyFront, destination: Destination) -> None:
        self.front = front
        self.destination = destination
        self.h11 = h11.Connection(h11.CLIENT)
        self._unsent: list[bytes] = []
        self.lost = False

    def makeConnection(self, transport: TunnelStream) -> None:
        self.stream = transport
        super().makeConnection(transport)

    def connectionMade(self) -> None:
        stream = self.stream
        unsent, self._unsent = self._unsent, []
        for data in unsent:
            stream.write(data)
        self.front._link_connected(self, stream)

    def send(self, event) -> None:
        data = self.h11.send(event)
        if not data:
            return
        if self.transport is None:
            self._unsent.append(data)
        else:
            self.transport.write(data)

    @property
    def reusable(self) -> bool:
        return not self.lost and self.h11.our_state is h11.IDLE and self.h11.their_state is h11.IDLE

    def dataReceived(self, data: bytes) -> None:
        self.h11.receive_data(data)
        self.front._origin_events(self)

    def readConnectionLost(self) -> None:
        self.h11.receive_data(b"")
        self.front._origin_events(self)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason=None) -> None:
        self.lost = True
        self.front._link_lost(self, reason)


FORM_LIMIT = 4096  # a button's form is a token: anything longer is cut, and fails the check


def cross_site(headers: dict, host: str) -> str:
    """Why a state-changing request came from another site's page, or '' (no CSRF): the
    browser's own Sec-Fetch-Site and Origin say where the form was."""
    fetch_site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower()
    if fetch_site and fetch_site not in ("same-origin", "none"):
        return f"refused: a page of another site sent this request (Sec-Fetch-Site: {fetch_site})"
    origin = headers.get(b"origin")
    if origin is not None:
        text = origin.decode("latin-1")
        if text == "null" or urlsplit(text).netloc.lower() != host.lower():
            return f"refused: sent from {text}, not from this agent's own page"
    return ""


class ProxyFront(HttpFront):
    """One local client connection to the agent's proxy port."""

    def __init__(self, site: ProxySite) -> None:
        super().__init__(site.endings, site.head_timeout)
        self.site = site
        self.max_header_bytes = site.max_header_bytes
        self.link: OriginLink | None = None
        self._request: h11.Request | None = None
        self._response_started = False
        self._form: tuple[str, bytearray] | None = None  # a status-page button's POST, its body arriving

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.clients += 1

    def connectionLost(self, reason=None) -> None:
        self.site.clients -= 1
        super().connectionLost(reason)
        link, self.link = self.link, None
        if link is not None and link.transport is not None and not link.lost:
            if ended_cleanly(reason) and link.reusable:
                self.site.endings.close(link.transport)
            else:  # the client reset, or left mid-exchange: the origin must not see an end
                self.site.endings.abort(link.transport)

    # -- requests --------------------------------------------------------------------
    def handle_event(self, event) -> None:
        if isinstance(event, h11.Request):
            self._on_request(event)
        elif isinstance(event, h11.Data):
            if self._form is not None:
                self._form[1].extend(event.data[: FORM_LIMIT - len(self._form[1])])
            elif self.link is not None:
                self.link.send(h11.Data(data=event.data))
        elif isinstance(event, h11.EndOfMessage):
            if self._form is not None:
                action, body = self._form
                self._form = None
                self._submitted(action, bytes(body))
                return
            if self.link is not None and self._request is not None and self._request.method != b"CONNECT":
                self.link.send(h11.EndOfMessage())
                self._maybe_next_cycle()

    def _on_request(self, request: h11.Request) -> None:
        self.site.local.busy(self.transport)
        self._request = request
        self._response_started = False
        target = request.target
        if request.method == b"CONNECT":
            try:
                destination = parse_authority(target)
            except BadAddress as e:
                self.fail(400, str(e))
                return
            self._connect(destination)
        elif target.startswith(b"/"):
            self._local(request)
        else:
            try:
                url = parse_http_url(target)
            except BadAddress as e:
                self.fail(400, str(e))
                return
            self._forward(request, url)

    def _local(self, request: h11.Request) -> None:
        """Requests addressed to the agent itself, not to be proxied."""
        path = request.target.split(b"?", 1)[0]
        host = dict(request.headers).get(b"host", b"").decode("ascii", "replace")
        if not self.site.pages.serves_host(host):
            # A web page that rebinds its own name to 127.0.0.1 still sends that name.
            self._answer(
                403,
                b"this agent answers only requests addressed to it by a loopback name or address (Host)\n",
                b"text/plain",
            )
            return
        if path == b"/health" and request.method == b"GET":
            body = json.dumps(self.site.pages.health()).encode() + b"\n"
            self._answer(200, body, b"application/json")
        elif path == b"/" and request.method in (b"GET", b"HEAD"):
            self._answer(
                200, render_status(self.site.pages.status(host), self.site.pages.csrf), b"text/html; charset=utf-8"
            )
        elif path == b"/status.json" and request.method == b"GET":
            self._answer(200, json.dumps(self.site.pages.status(host)).encode() + b"\n", b"application/json")
        elif path in (b"/server/wake", b"/server/stop") and request.method == b"POST":
            refusal = cross_site(dict(request.headers), host)
            if refusal:
                self._answer(403, refusal.encode() + b"\n", b"text/plain")
                return
            self._form = (path.rsplit(b"/", 1)[1].decode(), bytearray())  # the token arrives in the body
        elif path == b"/proxy.pac" and request.method in (b"GET", b"HEAD"):
            host = dict(request.headers).get(b"host", b"").decode("ascii", "replace")
            self._answer(200, self.site.pages.pac(host).encode(), b"application/x-ns-proxy-autoconfig")
        else:
            self._answer(
                400,
                b"this is Fluidity's proxy port: send absolute-form http:// requests, CONNECT or SOCKS5 (GET / for "
                b"its status page, /health for JSON, /proxy.pac for browsers)\n",
                b"text/plain",
            )

    def _submitted(self, action: str, body: bytes) -> None:
        """A status-page button: only with the page's own token, then back to the page (303)."""
        token = parse_qs(body.decode("latin-1")).get("token", [""])[0]
        if not hmac.compare_digest(token.encode(), self.site.pages.csrf.encode()):
            self._answer(
                403,
                b"this button works only from the agent's own page (its token is missing or wrong)\n",
                b"text/plain",
            )
            return
        self.site.pages.act(action)
        self._answer(303, b"", b"text/plain", extra=[(b"location", b"/")])

    def _answer(self, status: int, body: bytes, content_type: bytes, extra: list | None = None) -> None:
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            *(extra or []),
        ]
        self.transport.write(
            self.h11.send(h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase.encode()))
        )
        self.transport.write(self.h11.send(h11.Data(data=body)))
        self.transport.write(self.h11.send(h11.EndOfMessage()))
        self._maybe_next_cycle()

    # -- CONNECT ---------------------------------------------------------------------
    def _connect(self, destination: Destination) -> None:
        bridge(
            self.site.opener,
            destination,
            self.transport,
            self,
            self.site.endings,
        )
        log.debug("CONNECT {dest}", dest=destination.authority)

    # opener.Front: what the bridge asks of this front
    def accept(self) -> RelayEnd:
        return self.accept_switch(
            None, None, h11.Response(status_code=200, headers=[], reason=b"Connection established")
        )

    def refuse(self, error) -> None:
        self.fail(http_status(error.status), error.reason)

    # -- absolute-form http:// -------------------------------------------------------
    def _forward(self, request: h11.Request, url: HttpTarget) -> None:
        destination = url.destination
        link = self.link
        if link is None or link.destination != destination or not link.reusable:
            if link is not None:
                self._drop_link(link)
            link = self.link = OriginLink(self, destination)
            reach(self.site.opener, destination, link, self, partial(self._link_failed, link=link))
            if link.transport is None and not self.finished:
                self.hold()  # the body waits until the tunnel takes it
        upgrade = wants_upgrade(request)
        # The origin sees the Host the URL names, whatever Host the client sent (RFC 9112 §3.2.2).
        headers = [(b"host", url.host.encode())] + [
            (n, v) for n, v in forwardable(request.headers, keep_upgrade=upgrade) if n != b"host"
        ]
        log.debug("{method} {dest}", method=request.method.decode("ascii", "replace"), dest=destination.authority)
        link.send(h11.Request(method=request.method, target=url.path.encode(), headers=headers))

    def _drop_link(self, link: OriginLink) -> None:
        self.link = None
        if link.transport is not None:
            link.transport.unregisterProducer()
            self.site.endings.close(link.transport)
        self.transport.unregisterProducer()

    def _link_connected(self, link: OriginLink, stream: TunnelStream) -> None:
        if link is not self.link:
            return
        arm(self.transport)  # from here a cut (even this process dying) must not look like an end
        # Backpressure both ways: a slow origin pauses the client, a slow client the stream.
        stream.registerProducer(self.site.endings.reader_of(self.transport), True)
        self.transport.registerProducer(stream, True)
        self.release()

    def _link_failed(self, error: OpenFailed, link: OriginLink) -> None:
        if link is not self.link:
            return
        self.link = None
        if self._response_started:
            self.site.endings.abort(self.transport)
        else:
            self.fail(http_status(error.status), error.reason)

    def _origin_events(self, link: OriginLink) -> None:
        if link is not self.link or self.finished:
            return
        try:
            self._pass_on_response(link)
        except h11.LocalProtocolError as e:  # a response the client's side cannot carry as framed
            self._origin_broke(link, f"bad response from {link.destination.authority}: {e}")

    def _pass_on_response(self, link: OriginLink) -> None:
        while True:
            try:
                event = link.h11.next_event()
            except h11.RemoteProtocolError as e:
                self._origin_broke(link, f"bad response from {link.destination.authority}: {e}")
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.ConnectionClosed):
                return
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    if self._request is not None and wants_upgrade(self._request):
                        self._upgrade(link, event)
                    else:
                        self._origin_broke(
                            link, f"{link.destination.authority} switched protocols (101) without being asked to"
                        )
                    return
                self.transport.write(
                    self.h11.send(
                        h11.InformationalResponse(
                            status_code=event.status_code,
                            headers=forwardable(event.headers, False),
                            reason=event.reason,
                        )
                    )
                )
            elif isinstance(event, h11.Response):
                self._response_started = True
                self.transport.write(
                    self.h11.send(
                        h11.Response(
                            status_code=event.status_code, headers=_response_headers(event.headers), reason=event.reason
                        )
                    )
                )
            elif isinstance(event, h11.Data):
                self.transport.write(self.h11.send(h11.Data(data=event.data)))
            elif isinstance(event, h11.EndOfMessage):
                self.transport.write(self.h11.send(h11.EndOfMessage()))
                if link.h11.our_state is h11.DONE and link.h11.their_state is h11.DONE:
                    link.h11.start_next_cycle()
                self._maybe_next_cycle()
                return

    def _upgrade(self, link: OriginLink, response: h11.InformationalResponse) -> None:
        """A 101 from the origin (WebSocket): both sides become a raw relay over the stream."""
        leftover, _ = link.h11.trailing_data
        headers = (
            forwardable(response.headers, False)
            + [(n, v) for n, v in response.headers if n == b"upgrade"]
            + [(b"connection", b"Upgrade")]
        )
        stream = link.stream
        self.link = None
        stream.unregisterProducer()
        self.transport.unregisterProducer()
        upstream = RelayEnd(self.site.endings)
        stream.attach(upstream)  # the stream's bytes now go to the relay, not the link
        self.accept_switch(
            stream, upstream, h11.InformationalResponse(status_code=101, headers=headers, reason=response.reason)
        )
        if leftover:
            self.transport.write(leftover)

    def _origin_broke(self, link: OriginLink, reason: str) -> None:
        log.info("{reason}", reason=reason)
        self.link = None
        if link.transport is not None:
            link.transport.abortConnection()
        if self._response_started:
            self.site.endings.abort(self.transport)
        else:
            self.fail(502, reason)

    def _link_lost(self, link: OriginLink, reason) -> None:
        if link is not self.link or self.finished:
            return
        self.link = None
        if self._request is not None and self.h11.our_state is h11.SEND_RESPONSE and not self._response_started:
            self.fail(502, f"{link.destination.authority} closed the connection without answering")
        elif self.h11.our_state is h11.SEND_BODY:
            self.site.endings.abort(self.transport)  # a truncated body must not look complete

    def _maybe_next_cycle(self) -> None:
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            self._request = None
            self._response_started = False
            self.site.local.idle(self.transport)
            self.await_head()
            self.process()
        elif h11.MUST_CLOSE in (self.h11.our_state, self.h11.their_state) and self.h11.our_state in (
            h11.DONE,
            h11.MUST_CLOSE,
        ):
            self.finished = True
            self.site.endings.close(self.transport)


def _response_headers(headers) -> list[tuple[bytes, bytes]]:
    """Hop-by-hop headers go; h11 re-frames the body (chunked when the origin closed to end it).
    A Transfer-Encoding overrides a Content-Length (RFC 9112 §6.1): the body was read chunked,
    so its length is unknown here and the Content-Length is not passed on."""
    chunked = any(n == b"transfer-encoding" for n, _ in headers)
    return [
        (n, v)
        for n, v in forwardable(headers, False)
        if n != b"transfer-encoding" and not (chunked and n == b"content-length")
    ]
