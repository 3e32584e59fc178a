"""What the HTTP/1.1 fronts share: request-head parsing with h11, error answers, and the
switch from HTTP to a raw byte relay once a CONNECT (or a WebSocket upgrade) is agreed.

The server's http/1.1 CONNECT listener and the agent's local proxy both build on it.
"""

from __future__ import annotations

from http import HTTPStatus

import h11
from twisted.internet.interfaces import IDelayedCall

from tunnel.wire.endings import Endings, Pipe, no_delay
from tunnel.wire.handover import HandsOver
from tunnel.wire.relay import RelayEnd, splice


def plain_response(status: int, reason: str, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A complete `Connection: close` answer whose body is the one-line reason."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = (reason.replace("\r", " ").replace("\n", " ") + "\n").encode("utf-8", "replace")
    head = [
        f"HTTP/1.1 {status} {phrase}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    head += [f"{k}: {v}" for k, v in extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _smuggling(request: h11.Request) -> bool:
    """Both framings at once (RFC 9112 §6.3): two parsers may disagree on where it ends."""
    names = {n for n, _ in request.headers}
    return b"content-length" in names and b"transfer-encoding" in names


def _connect_with_content(request: h11.Request) -> bool:
    """A CONNECT has no content (RFC 9110 §9.3.6): bytes framed as its body would reach the
    destination as something other than what a front-end in line saw."""
    if request.method != b"CONNECT":
        return False
    for name, value in request.headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


def _head_size(request: h11.Request) -> int:
    return len(request.target) + sum(len(n) + len(v) + 4 for n, v in request.headers)


class HttpFront(HandsOver):
    """Parses requests with h11 until `start_relay` hands the connection to a relay."""

    max_header_bytes = 65536

    def __init__(self, endings: Endings, head_timeout: float = 0.0) -> None:
        self.h11: h11.Connection  # made at connectionMade (a subclass may set max_header_bytes first)
        self.relay: RelayEnd | None = None
        self.finished = False
        self.endings = endings
        self.clock = endings.clock
        self.head_timeout = head_timeout  # 0: none
        self._head_timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_header_bytes)
        self.await_head()

    # -- slow clients ----------------------------------------------------------------
    def await_head(self) -> None:
        """A request head must arrive within head_timeout (from the connection, or from
        the end of the previous exchange): slowloris costs a socket for that long only."""
        self._disarm()
        if self.head_timeout and self.clock is not None and not self.finished:
            self._head_timer = self.clock.callLater(self.head_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None and self._head_timer.active():
            self._head_timer.cancel()
        self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.relay is None and not self.finished:
            self.fail(408, f"no complete request head within {self.head_timeout:g}s")

    # -- incoming bytes, until the connection is handed over -------------------------
    def received(self, data: bytes) -> None:
        if self.finished:
            return
        self.h11.receive_data(data)
        self.process()

    def read_ended(self) -> None:
        if not self.finished:
            self.h11.receive_data(b"")
            self.process()

    def gone(self) -> bool:
        """For `opener.Front`: the client left, or this front is done with it."""
        return self.finished

    def lost(self, reason) -> None:
        self.finished = True
        self._disarm()

    def process(self) -> None:
        """Feed h11 events to `handle_event` until h11 needs more bytes or pauses."""
        while not self.finished and self.relay is None:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                status = e.error_status_hint if e.error_status_hint in (400, 413, 414, 431) else 400
                reason = "request headers too large" if status == 431 else f"malformed request: {e}"
                self.fail(status, reason)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.ConnectionClosed):
                self.finished = True
                self.endings.close(self.transport)
                return
            if isinstance(event, h11.Request):
                self._disarm()
                if _head_size(event) > self.max_header_bytes:
                    # h11 bounds only heads still arriving; one that came whole is measured here.
                    self.fail(431, "request headers too large")
                    return
                if event.http_version not in (b"1.0", b"1.1"):
                    self.fail(
                        505, f"HTTP/{event.http_version.decode('ascii', 'replace')} is not supported; use HTTP/1.1"
                    )
                    return
                if _smuggling(event):
                    self.fail(
                        400, "a request with both Content-Length and Transfer-Encoding is refused (request smuggling)"
                    )
                    return
                if _connect_with_content(event):
                    self.fail(
                        400,
                        "a CONNECT request has no content (RFC 9110 §9.3.6): send no Content-Length or "
                        "Transfer-Encoding",
                    )
                    return
            self.handle_event(event)

    def handle_event(self, event) -> None:
        raise NotImplementedError  # each front decides what a request means

    # -- answers --------------------------------------------------------------------
    def fail(self, status: int, reason: str, extra: tuple[tuple[str, str], ...] = ()) -> None:
        """Answer with `status` and a one-line reason, then close."""
        if self.finished:
            return
        self.finished = True
        if self.h11 is not None and self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self.transport.write(plain_response(status, reason, extra))
        self.endings.close(self.transport)

    def accept_switch(
        self,
        upstream: Pipe | None,
        upstream_end: RelayEnd | None,
        response: h11.Response | h11.InformationalResponse,
    ) -> RelayEnd:
        """Send the 200/101 that switches protocols and relay raw bytes from here on."""
        self.transport.write(self.h11.send(response))
        return self.start_relay(upstream, upstream_end)

    def start_relay(self, upstream: Pipe | None, upstream_end: RelayEnd | None) -> RelayEnd:
        """Relay raw bytes from here on; with `upstream`, spliced to it through `upstream_end`.
        Returns the RelayEnd now reading the client."""
        self._disarm()
        early, closed = self.h11.trailing_data
        relay = self.relay = RelayEnd(self.endings)
        relay.makeConnection(self.transport)
        self.hand_over(relay)
        if early:
            relay.dataReceived(early)
        if upstream is not None and upstream_end is not None:  # given together, or neither
            splice(self.transport, relay, upstream, upstream_end)
        if closed:
            relay.readConnectionLost()
        return relay
