"""HTTP/2 CONNECT multiplexing: many tunnelled byte streams over one TLS connection.

`h2` keeps the protocol state (sans-IO); this module is the Twisted glue. Each
CONNECT stream is presented as a transport (`TunnelStream`) so the relay and the
proxy fronts treat it exactly like a TCP connection. Flow control is real
backpressure: received bytes are acknowledged (WINDOW_UPDATE) only once the
consumer of the stream has taken them, and a stream's producer is paused while
its send window is exhausted.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
import struct
from typing import Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tunnel.wire import h2_speedups
from tunnel.wire.addresses import BadAddress, Destination, parse_authority
from tunnel.opener import OpenFailed
from tunnel.wire.relay import close, no_delay

h2_speedups.install()  # a no-op (and still correct) if hyperframe changed

log = Logger(namespace="fluidity.mux")

STREAM_WINDOW = 8 << 20  # per stream: enough for ~80 Mbit/s at 100 ms without stalling
CONNECTION_WINDOW = 32 << 20  # shared by all streams of one agent
MAX_FRAME = 1 << 18
MAX_HEADER_LIST = 16 << 10


class Budget:
    """At most `limit` events per `window` seconds (fixed windows): what an honest peer
    never needs, and a flood always exceeds."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.start = 0.0
        self.count = 0

    def spend(self, now: float) -> bool:
        if now - self.start >= self.window:
            self.start, self.count = now, 0
        self.count += 1
        return self.count <= self.limit


# Per connection and 10 seconds. Rapid reset (CVE-2023-44487) opens and resets streams
# faster than any client closes connections; SETTINGS and PING floods make us write
# ACKs the peer need not read; empty DATA frames cost work and carry nothing.
FLOOD_WINDOW = 10.0
# WINDOW_UPDATE: an honest h2 peer sends one per half window consumed (4 MiB a stream,
# 16 MiB the connection), a few hundred a second at gigabit rates.
FLOOD_LIMITS = {"stream resets": 2000, "SETTINGS frames": 100, "PING frames": 100, "empty DATA frames": 1000, "WINDOW_UPDATE frames": 20000}


class _Address:
    """What getPeer/getHost answer for a stream: the tunnelled destination."""

    type = "TUNNEL"

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def __repr__(self) -> str:
        return f"TunnelAddress({self.host}, {self.port})"


def _proxy_status(reason: str) -> str:
    """RFC 9209 Proxy-Status value carrying our one-line reason."""
    detail = reason.replace("\\", "\\\\").replace('"', '\\"')
    return f'fluidity; details="{detail}"'


def _reason_from(headers: dict[bytes, bytes]) -> str:
    value = headers.get(b"proxy-status", b"").decode("utf-8", "replace")
    start = value.find('details="')
    if start < 0:
        return ""
    text = value[start + 9 :]
    return text[: text.rfind('"')].replace('\\"', '"').replace("\\\\", "\\") if '"' in text else text


@implementer(IPushProducer)
class TunnelStream:
    """One CONNECT stream as a Twisted transport, producer and consumer."""

    disconnecting = False

    def __init__(self, mux: "TunnelMux", stream_id: int, destination: Destination) -> None:
        self.mux = mux
        self.stream_id = stream_id
        self.destination = destination
        self.protocol: Protocol | None = None
        self.ready: Deferred = Deferred()  # agent side: fires on the server's 200
        self.connected = True
        self._inbox: list[bytes] = []
        self._outbox: deque[bytes] = deque()  # chunks as written: sent without copying when they fit
        self._end_queued = False
        self._local_ended = False
        self._remote_ended = False
        self._closed = False
        self._producer = None
        self._producer_paused = False
        self._reader_paused = False
        self._unacked = 0
        self.delivered = 0  # bytes sent within the peer's window: how a closing stream shows progress

    # -- attaching the protocol that consumes this stream --------------------------
    def attach(self, protocol: Protocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self)
        inbox, self._inbox = self._inbox, []
        for data in inbox:
            protocol.dataReceived(data)
        if not self._reader_paused:
            self._ack_pending()
        if self._remote_ended:
            self._deliver_eof()
        if self._closed:
            protocol.connectionLost(Failure(ConnectionDone()))

    # -- ITransport ----------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self._closed or self._end_queued or not data:
            return
        self._outbox.append(bytes(data))
        self.mux._flush_stream(self)

    def writeSequence(self, seq) -> None:
        self.write(b"".join(seq))

    def loseWriteConnection(self) -> None:
        """Half-close: END_STREAM once queued bytes have gone."""
        if self._closed or self._end_queued:
            return
        self._end_queued = True
        self.mux._flush_stream(self)

    def loseConnection(self) -> None:
        """Send what is queued, END_STREAM, and stop listening for more from the peer."""
        if self._closed:
            return
        self.disconnecting = True
        self.loseWriteConnection()
        self.mux._maybe_cancel(self)

    def abortConnection(self) -> None:
        if self._closed:
            return
        self.mux._reset(self, h2.errors.ErrorCodes.CANCEL)
        self._close(Failure(ConnectionLost("stream aborted")))

    def getPeer(self) -> _Address:
        return _Address(self.destination.host, self.destination.port)

    def getHost(self) -> _Address:
        return _Address("tunnel", self.stream_id)

    # -- IConsumer -----------------------------------------------------------------
    def registerProducer(self, producer, streaming: bool) -> None:
        self._producer = producer
        self._producer_paused = False
        if self._closed:
            producer.stopProducing()
        elif self._outbox:
            self._pause_producer()

    def unregisterProducer(self) -> None:
        self._producer = None

    def _pause_producer(self) -> None:
        if self._producer is not None and not self._producer_paused:
            self._producer_paused = True
            self._producer.pauseProducing()

    def _resume_producer(self) -> None:
        if self._producer is not None and self._producer_paused:
            self._producer_paused = False
            self._producer.resumeProducing()

    # -- IPushProducer: whoever consumes our bytes controls the acknowledgements ------
    def pauseProducing(self) -> None:
        self._reader_paused = True

    def resumeProducing(self) -> None:
        self._reader_paused = False
        self._ack_pending()

    def stopProducing(self) -> None:
        self.abortConnection()

    # -- driven by the mux ------------------------------------------------------------
    def _receive(self, data: bytes, flow_length: int) -> None:
        self._unacked += flow_length
        if self.protocol is None:
            self._inbox.append(data)
            return
        self.protocol.dataReceived(data)
        if not self._reader_paused:
            self._ack_pending()

    def _ack_pending(self) -> None:
        if self._unacked and not self._closed:
            n, self._unacked = self._unacked, 0
            self.mux._acknowledge(self.stream_id, n)

    def _remote_end(self) -> None:
        self._remote_ended = True
        if self.protocol is not None:
            self._deliver_eof()
        self._close_if_done()

    def _deliver_eof(self) -> None:
        half = IHalfCloseableProtocol(self.protocol, None)
        if half is not None:
            half.readConnectionLost()
        elif not self._local_ended:
            self.loseConnection()

    def _local_end(self) -> None:
        self._local_ended = True
        half = IHalfCloseableProtocol(self.protocol, None)
        if half is not None:
            half.writeConnectionLost()
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self._local_ended and self._remote_ended:
            self._close(Failure(ConnectionDone()))

    def _close(self, reason: Failure) -> None:
        if self._closed:
            return
        self._closed = True
        self.connected = False
        self._outbox.clear()
        # Bytes never acknowledged still count against the connection window.
        if self._unacked:
            self.mux._acknowledge(self.stream_id, self._unacked)
            self._unacked = 0
        self.mux._forget(self)
        if not self.ready.called:
            self.ready.errback(OpenFailed(502, f"tunnel stream closed before the server answered ({reason.getErrorMessage()})"))
        self._producer = None
        if self.protocol is not None:
            self.protocol.connectionLost(reason)


class TunnelMux(Protocol):
    """One HTTP/2 connection carrying CONNECT streams; `client_side` for the agent.

    On the server, `on_stream(stream)` is called for each valid CONNECT and must
    later call `respond(stream, 200)` or `refuse(stream, status, reason)`.
    """

    def __init__(
        self,
        *,
        client_side: bool,
        clock,
        on_stream: Callable[[TunnelStream], None] | None = None,
        max_streams: int = 2000,
        keepalive_interval: float = 15.0,
        keepalive_timeout: float = 10.0,
        on_drain: Callable[["TunnelMux"], None] | None = None,
        on_ready: Callable[["TunnelMux"], None] | None = None,
        on_lost: Callable[["TunnelMux", Failure], None] | None = None,
        peer_name: str = "",
    ) -> None:
        self.client_side = client_side
        self.clock = clock
        self.on_stream = on_stream
        self.on_drain = on_drain
        self.on_ready = on_ready
        self.on_lost = on_lost
        self.peer_ready = False  # the peer's SETTINGS arrived: TLS and HTTP/2 both work
        self.max_streams = max_streams
        self.keepalive_interval = keepalive_interval
        self.keepalive_timeout = keepalive_timeout
        self.peer_name = peer_name
        self.identity = peer_name  # the server sets the peer certificate's CN
        self.streams: dict[int, TunnelStream] = {}
        # Streams with bytes queued that a window kept back, in round-robin order: a window
        # opening visits these only, so its cost does not grow with the number of streams.
        self._waiting: OrderedDict[int, TunnelStream] = OrderedDict()
        self.draining = False
        self.closed = False
        self.terminated = False  # a GOAWAY went either way: h2 accepts nothing more
        self.last_activity = clock.seconds()
        self.closed_deferred: Deferred = Deferred()
        self._paused = False
        self._in_receive = False
        self._ping_ids = itertools.count(1)
        self._budgets = {what: Budget(limit, FLOOD_WINDOW) for what, limit in FLOOD_LIMITS.items()}
        self._ping_call = None
        self._ping_deadline = None
        # Inbound headers come from the peer and are checked; outbound ones are ours, built well-formed.
        config = h2.config.H2Configuration(
            client_side=client_side, header_encoding=None, validate_inbound_headers=True, validate_outbound_headers=False, normalize_outbound_headers=False
        )
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.local_settings = h2.settings.Settings(
            client=client_side,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams if not client_side else 0,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        # Settings given before the preface count as already in force; h2 only syncs this on ACK.
        self.h2.max_inbound_frame_size = MAX_FRAME

    # -- connection lifecycle -------------------------------------------------------
    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.transport.registerProducer(self, True)
        self._write_out()
        if self.keepalive_interval > 0:
            self._ping_call = self.clock.callLater(self.keepalive_interval, self._send_ping)

    def dataReceived(self, data: bytes) -> None:
        if self.terminated:
            return
        self.last_activity = self.clock.seconds()
        self._in_receive = True
        try:
            events = self.h2.receive_data(data)
            for event in events:
                self._dispatch(event)
                if self.terminated:
                    break
        except h2.exceptions.ProtocolError as e:
            log.warn("HTTP/2 protocol error from {peer}: {error}; closing", peer=self.peer_name, error=str(e) or type(e).__name__)
            self.terminated = True  # the rest of what this peer sends is not read
            # h2 queues its own GOAWAY for errors in what it received: one is enough.
            state = getattr(getattr(self.h2, "state_machine", None), "state", None)
            if state is not h2.connection.ConnectionState.CLOSED:
                try:
                    self.h2.close_connection(error_code=getattr(e, "error_code", h2.errors.ErrorCodes.PROTOCOL_ERROR))
                except h2.exceptions.ProtocolError:
                    pass
            self._in_receive = False
            self._write_out()
            self.close()
            return
        finally:
            self._in_receive = False
        self._write_out()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.closed = True
        for call in (self._ping_call, self._ping_deadline):
            if call is not None and call.active():
                call.cancel()
        for stream in list(self.streams.values()):
            stream._close(Failure(ConnectionLost("tunnel connection lost")))
        if not self.closed_deferred.called:
            self.closed_deferred.callback(None)
        if self.on_lost is not None:
            self.on_lost(self, reason)

    def close(self) -> None:
        """Close once flushed, with a bounded linger if the peer stops reading."""
        if self.transport is not None:
            close(self.transport, clock=self.clock)

    def _write_out(self) -> None:
        if self._in_receive:
            return
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    # -- IPushProducer for the TLS transport: stop pushing stream data while it is full --
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._flush_all()

    def _flush_all(self) -> None:
        """Send what waits, stream by stream, until the transport or the connection window is full."""
        for _ in range(len(self._waiting)):
            if self._paused or self.h2.outbound_flow_control_window <= 0 or not self._waiting:
                return
            _, stream = self._waiting.popitem(last=False)
            self._flush_stream(stream)  # puts it back at the end if it still has bytes

    def stopProducing(self) -> None:
        self.transport.abortConnection()

    # -- events ---------------------------------------------------------------------
    def _flooding(self, what: str) -> bool:
        """Spend from `what`'s budget; when it runs out, GOAWAY ENHANCE_YOUR_CALM and close."""
        if self._budgets[what].spend(self.clock.seconds()):
            return False
        log.warn("closing {peer}: more than {n} {what} in {w:g}s", peer=self.peer_name, n=FLOOD_LIMITS[what], what=what, w=FLOOD_WINDOW)
        self.terminated = True
        self.h2.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        self._in_receive = False
        self._write_out()
        self.close()
        return True

    def _dispatch(self, event) -> None:
        if self.terminated:
            return
        if isinstance(event, h2.events.DataReceived):  # the hot path first
            if not event.data and not event.stream_ended and self._flooding("empty DATA frames"):
                return
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                stream._receive(event.data, event.flow_controlled_length)
            if event.stream_ended and stream is not None:
                stream._remote_end()
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None and not stream._remote_ended:
                stream._remote_end()
        elif isinstance(event, h2.events.RequestReceived):
            self._on_request(event)
        elif isinstance(event, h2.events.ResponseReceived):
            self._on_response(event)
        elif isinstance(event, h2.events.StreamReset):
            if event.remote_reset and self._flooding("stream resets"):
                return
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                code = event.error_code
                name = getattr(code, "name", str(code))
                if not stream.ready.called:
                    failure = OpenFailed(503, "server refused the stream (draining); retry") if code == h2.errors.ErrorCodes.REFUSED_STREAM else OpenFailed(502, f"stream reset by peer ({name})")
                    stream.ready.errback(failure)
                stream._close(Failure(ConnectionLost(f"stream reset by peer ({name})")))
        elif isinstance(event, h2.events.WindowUpdated):
            if self._flooding("WINDOW_UPDATE frames"):
                return
            if event.stream_id == 0:
                self._flush_all()
            else:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    self._flush_stream(stream)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            if self._flooding("SETTINGS frames"):
                return
            if not self.peer_ready:
                self.peer_ready = True
                if self.on_ready is not None:
                    self.on_ready(self)
            changed = event.changed_settings
            limit = changed.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
            if self.client_side and limit is not None and limit.new_value == 0:
                self._start_draining()
            if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in changed:
                self._flush_all()
        elif isinstance(event, h2.events.PingReceived):
            self._flooding("PING frames")  # h2 has queued the ACK; a flood closes the connection
        elif isinstance(event, h2.events.PingAckReceived):
            if self._ping_deadline is not None and self._ping_deadline.active():
                self._ping_deadline.cancel()
            self._ping_deadline = None
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = True
            log.info("peer {peer} closed the tunnel connection ({code})", peer=self.peer_name, code=getattr(event.error_code, "name", event.error_code))
            self.close()

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        headers = dict(event.headers)
        if self.client_side:
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        if self.draining:
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        if headers.get(b":method") != b"CONNECT" or b":protocol" in headers:
            self._answer(sid, 405, "only CONNECT is supported")
            return
        try:
            destination = parse_authority(headers.get(b":authority", b""))
        except BadAddress as e:
            self._answer(sid, 400, str(e))
            return
        stream = TunnelStream(self, sid, destination)
        stream.ready.addErrback(lambda f: None)
        self.streams[sid] = stream
        if event.stream_ended:
            stream._remote_ended = True
        self.on_stream(stream)

    def _on_response(self, event: h2.events.ResponseReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None or stream.ready.called:
            return
        headers = dict(event.headers)
        try:
            status = int(headers.get(b":status", b"0"))
        except ValueError:
            status = 0
        if status == 200:
            stream.ready.callback(stream)
        else:
            reason = _reason_from(headers) or f"server answered {status}"
            stream.ready.errback(OpenFailed(status if status in (400, 403, 405, 429, 502, 503, 504) else 502, reason))

    def _answer(self, sid: int, status: int, reason: str) -> None:
        self.h2.send_headers(sid, [(b":status", str(status).encode()), (b"proxy-status", _proxy_status(reason).encode())], end_stream=True)
        self._write_out()

    # -- server side: answering a CONNECT ----------------------------------------------
    def respond(self, stream: TunnelStream) -> None:
        if stream._closed:
            return
        if self.terminated or self.closed:  # a GOAWAY went either way: h2 sends nothing more
            stream._close(Failure(ConnectionLost("tunnel connection is closing")))
            return
        self.h2.send_headers(stream.stream_id, [(b":status", b"200")])
        stream.ready.callback(stream)
        self._write_out()
        self._flush_stream(stream)

    def refuse(self, stream: TunnelStream, status: int, reason: str) -> None:
        if stream._closed:
            return
        if self.terminated or self.closed:
            stream._close(Failure(ConnectionDone(reason)))
            return
        self._answer(stream.stream_id, status, reason)
        if not stream._remote_ended:
            self._reset(stream, h2.errors.ErrorCodes.NO_ERROR)
        stream._close(Failure(ConnectionDone(reason)))

    # -- agent side: opening a stream --------------------------------------------------
    def open_stream(self, destination: Destination, protocol: Protocol) -> TunnelStream:
        """Send CONNECT and attach `protocol` at once: it may write before the 200 arrives."""
        if self.draining or self.closed or self.terminated:
            raise OpenFailed(503, "tunnel connection is closing")
        sid = self.h2.get_next_available_stream_id()
        try:
            self.h2.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", destination.authority.encode())])
        except h2.exceptions.TooManyStreamsError:
            raise OpenFailed(503, "the server's stream limit is reached") from None
        stream = TunnelStream(self, sid, destination)
        self.streams[sid] = stream
        self._write_out()
        stream.attach(protocol)
        return stream

    # -- sending ------------------------------------------------------------------------
    def _flush_stream(self, stream: TunnelStream) -> None:
        if stream._closed or self.closed:
            return
        sid = stream.stream_id
        outbox = stream._outbox
        try:
            while outbox and not self._paused:
                window = self.h2.local_flow_control_window(sid)
                if window <= 0:
                    break
                n = min(window, self.h2.max_outbound_frame_size)
                chunk = outbox.popleft()
                if len(chunk) > n:
                    outbox.appendleft(chunk[n:])
                    chunk = chunk[:n]
                last = stream._end_queued and not outbox
                self.h2.send_data(sid, chunk, end_stream=last)
                stream.delivered += len(chunk)
                if last:
                    stream._local_end()
            if stream._end_queued and not outbox and not stream._local_ended and not stream._closed:
                self.h2.end_stream(sid)
                stream._local_end()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as e:
            log.debug("stream {sid} cannot send: {e}", sid=sid, e=e)
            stream._close(Failure(ConnectionLost(str(e))))
        self._write_out()
        if stream._outbox and not stream._closed:
            self._waiting[sid] = stream
            stream._pause_producer()
        else:
            self._waiting.pop(sid, None)
            stream._resume_producer()

    def _maybe_cancel(self, stream: TunnelStream) -> None:
        """After loseConnection, once our END_STREAM is out, stop the peer's direction too."""
        if stream._local_ended and not stream._remote_ended and not stream._closed:
            self._reset(stream, h2.errors.ErrorCodes.CANCEL)
            stream._close(Failure(ConnectionDone()))

    def _reset(self, stream: TunnelStream, code) -> None:
        try:
            self.h2.reset_stream(stream.stream_id, code)
        except h2.exceptions.ProtocolError:
            pass
        self._write_out()

    def _acknowledge(self, stream_id: int, n: int) -> None:
        if self.closed or self.terminated:
            return
        try:
            self.h2.acknowledge_received_data(n, stream_id)
        except h2.exceptions.ProtocolError:
            return
        self._write_out()

    def _forget(self, stream: TunnelStream) -> None:
        self.streams.pop(stream.stream_id, None)
        self._waiting.pop(stream.stream_id, None)
        if self.draining and not self.streams:
            self._finish_drain()

    # -- keepalive --------------------------------------------------------------------
    def _send_ping(self) -> None:
        self._ping_call = None
        if self.closed:
            return
        if self._ping_deadline is None:
            try:
                self.h2.ping(struct.pack(">Q", next(self._ping_ids)))
            except h2.exceptions.ProtocolError:
                return  # the connection is closing; nothing to keep alive
            self._write_out()
            self._ping_deadline = self.clock.callLater(self.keepalive_timeout, self._ping_timed_out)
        self._ping_call = self.clock.callLater(self.keepalive_interval, self._send_ping)

    def _ping_timed_out(self) -> None:
        self._ping_deadline = None
        log.warn("no PING answer from {peer} in {t}s; dropping the connection", peer=self.peer_name, t=self.keepalive_timeout)
        self.transport.abortConnection()

    # -- graceful drain ------------------------------------------------------------------
    def begin_drain(self) -> None:
        """Server: refuse new streams (SETTINGS max streams 0), let open ones finish."""
        if self.closed or self.draining:
            return
        self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 0})
        self._write_out()
        self._start_draining()

    def _start_draining(self) -> None:
        self.draining = True
        if self.on_drain is not None:
            self.on_drain(self)
        if not self.streams:
            self._finish_drain()

    def _finish_drain(self) -> None:
        if self.closed:
            return
        self.terminated = True
        try:
            self.h2.close_connection()
        except h2.exceptions.ProtocolError:
            pass
        self._write_out()
        self.close()
