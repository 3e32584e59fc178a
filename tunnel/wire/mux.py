"""HTTP/2 CONNECT multiplexing over one TLS connection: the Twisted side.

The protocol lives in `connection.TunnelConnection` (sans-IO: bytes and times in, events
and bytes out). This module does only what needs the reactor: `TunnelMux` feeds it the
socket's bytes, writes what it has to send, keeps the one timer it asks for, and turns
its events into calls on each stream; `TunnelStream` presents a stream as a Twisted
transport, producer and consumer, so the relay and the fronts treat it like a TCP
connection. Flow control is backpressure: received bytes are acknowledged only once
the stream's consumer has taken them, and a stream's producer is paused while its bytes
wait for a window.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IHalfCloseableProtocol,
    IPushProducer,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tunnel.wire import connection as sans_io  # the protocol's core (the instance is `self.core`)
from tunnel.wire.addresses import Destination
from tunnel.wire.endings import Endings, no_delay
from tunnel.wire.recovery import lower_rto_floor
from tunnel.wire.refusals import OpenFailed
from tunnel.wire.stalls import StallWatch, socket_side
from tunnel.wire.transports import ITLSConnection

log = Logger(namespace="fluidity.mux")

# Kept here too: the fronts and tests read the windows from the module they use.
STREAM_WINDOW, CONNECTION_WINDOW, MAX_FRAME = sans_io.STREAM_WINDOW, sans_io.CONNECTION_WINDOW, sans_io.MAX_FRAME
_WRITE_ENDED = (sans_io.StreamState.LOCAL_ENDED, sans_io.StreamState.CLOSED)  # our END_STREAM is out


@implementer(IAddress)
class _Address:
    """What getPeer/getHost answer for a stream: the tunnelled destination."""

    type = "TUNNEL"

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def __repr__(self) -> str:
        return f"TunnelAddress({self.host}, {self.port})"


@implementer(ITransport, IConsumer, IPushProducer)
class TunnelStream:
    """One CONNECT stream as a Twisted transport, producer and consumer."""

    disconnecting = False

    def __init__(self, mux: TunnelMux, sid: int, destination: Destination) -> None:
        self.mux = mux
        self.stream_id = sid
        self.destination = destination
        self.protocol: Protocol | None = None
        self.ready: Deferred = Deferred()  # fires when the CONNECT is answered 200
        self.connected = True
        self._inbox: list[bytes] = []  # arrived before a protocol was attached
        self._producer = None
        self._producer_paused = False
        self._reader_paused = False
        self._on_closed: list[Callable[[], object]] = []

    def when_closed(self, callback: Callable[[], object]) -> None:
        """Call `callback` once the stream is closed (at once if it is)."""
        if self.closed and not self.connected:
            callback()
        else:
            self._on_closed.append(callback)

    @property
    def closed(self) -> bool:
        return self.mux.core.stream_state(self.stream_id) is sans_io.StreamState.CLOSED

    @property
    def delivered(self) -> int:
        """Bytes sent within the peer's window: how a closing stream shows progress."""
        return self.mux.core.delivered(self.stream_id)

    # -- attaching the protocol that consumes this stream --------------------------
    def attach(self, protocol: Protocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self)
        inbox, self._inbox = self._inbox, []
        for data in inbox:
            protocol.dataReceived(data)
        if not self._reader_paused:
            self.mux._acknowledge(self)
        if self.mux.core.stream_state(self.stream_id) in (sans_io.StreamState.REMOTE_ENDED, sans_io.StreamState.CLOSED):
            self._deliver_eof()
        if self.closed and not self.connected:
            protocol.connectionLost(Failure(ConnectionDone()))

    # -- ITransport ----------------------------------------------------------------
    def write(self, data: bytes) -> None:
        self.mux.bytes_sent += len(data)
        self.mux.core.send(self.stream_id, data)
        self.mux._run()

    def writeSequence(self, seq) -> None:
        self.write(b"".join(seq))

    def loseWriteConnection(self) -> None:
        """Half-close: END_STREAM once queued bytes have gone."""
        self.mux.core.end(self.stream_id)
        self.mux._run()

    def loseConnection(self) -> None:
        """Send what is queued, END_STREAM, and stop listening for more from the peer."""
        if self.closed:
            return
        self.disconnecting = True
        self.loseWriteConnection()
        self.mux.core.cancel_if_ended(self.stream_id)
        self.mux._run()

    def abortConnection(self) -> None:
        self.mux.core.reset(self.stream_id, "stream aborted")
        self.mux._run()

    def getPeer(self) -> _Address:
        return _Address(self.destination.host, self.destination.port)

    def getHost(self) -> _Address:
        return _Address("tunnel", self.stream_id)

    # -- IConsumer -----------------------------------------------------------------
    def registerProducer(self, producer, streaming: bool) -> None:
        self._producer = producer
        self._producer_paused = False
        if self.closed:
            producer.stopProducing()
        elif self.mux.core.queued(self.stream_id):
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
        self.mux._acknowledge(self)

    def stopProducing(self) -> None:
        self.abortConnection()

    def ends(self) -> str:
        """The two producers and the relayed socket, for a log line about a stalled stream."""
        sink = getattr(self.protocol, "sink", None)  # a relay's: where this stream's bytes go
        reader = getattr(self._producer, "transport", self._producer)  # what writes into this stream
        read = "the same" if reader is not None and reader is sink else socket_side(reader)
        return (
            f"its producer {'paused' if self._producer_paused else 'running' if self._producer else 'none'}, "
            f"its reader {'paused' if self._reader_paused else 'running'}; socket written to: {socket_side(sink)}; "
            f"socket read from: {read}"
        )

    # -- what the core says happened ------------------------------------------------
    def _receive(self, data: bytes) -> None:
        if self.protocol is None:
            self._inbox.append(data)
            return
        self.protocol.dataReceived(data)
        if not self._reader_paused:
            self.mux._acknowledge(self)

    def _deliver_eof(self) -> None:
        if self.protocol is None:
            return  # delivered on attach
        half = IHalfCloseableProtocol(self.protocol, None)
        if half is not None:
            half.readConnectionLost()
        elif self.mux.core.stream_state(self.stream_id) not in _WRITE_ENDED:
            self.loseConnection()

    def _local_end(self) -> None:
        half = IHalfCloseableProtocol(self.protocol, None)
        if half is not None:
            half.writeConnectionLost()

    def _closed(self, reason: Failure) -> None:
        self.connected = False
        if not self.ready.called:
            self.ready.errback(
                OpenFailed(502, f"tunnel stream closed before the server answered ({reason.getErrorMessage()})")
            )
        self._producer = None
        if self.protocol is not None:
            self.protocol.connectionLost(reason)
        callbacks, self._on_closed = self._on_closed, []
        for callback in callbacks:
            callback()


class TunnelMux(Protocol):
    """One HTTP/2 connection carrying CONNECT streams; `client_side` for the agent.

    On the server, `on_stream(stream)` is called for each valid CONNECT and must
    later call `respond(stream)` or `refuse(stream, status, reason)`.
    """

    # The TLS connection under the tunnel, set by makeConnection before any callback here
    # (Twisted types Protocol.transport as Optional).
    transport: ITLSConnection

    def __init__(
        self,
        *,
        client_side: bool,
        clock,
        on_stream: Callable[[TunnelStream], None] | None = None,
        limits: sans_io.TunnelLimits = sans_io.DEFAULT_LIMITS,
        on_drain: Callable[[TunnelMux], None] | None = None,
        on_ready: Callable[[TunnelMux], None] | None = None,
        on_lost: Callable[[TunnelMux, Failure], None] | None = None,
        peer_name: str = "",
    ) -> None:
        self.core = sans_io.TunnelConnection(client_side=client_side, limits=limits)
        self.client_side = client_side
        self.clock = clock
        self.endings = Endings(clock)
        self.on_stream = on_stream
        self.on_drain = on_drain
        self.on_ready = on_ready
        self.on_lost = on_lost
        self.limits = limits
        self.peer_name = peer_name
        self.identity = peer_name  # the server sets the peer certificate's CN
        self.streams: dict[int, TunnelStream] = {}
        self.bytes_sent = self.bytes_received = 0  # stream payload, for the agent's status page
        self.closed = False
        self.last_activity = clock.seconds()
        self.closed_deferred: Deferred = Deferred()
        self._in_receive = False
        self._timer = None
        self.stalls = StallWatch()

    @property
    def peer_ready(self) -> bool:
        return self.core.peer_ready

    @property
    def draining(self) -> bool:
        return self.core.draining

    @property
    def terminated(self) -> bool:
        return self.core.terminated

    # -- connection lifecycle -------------------------------------------------------
    def connectionMade(self) -> None:
        no_delay(self.transport)
        lower_rto_floor(self.transport)
        self.core.start(self.clock.seconds())
        # A TCP or TLS transport is a consumer too, which ITCPTransport does not declare.
        cast(IConsumer, self.transport).registerProducer(cast(IPushProducer, self), True)
        self._write_out()
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        if self.core.terminated:
            return
        self.last_activity = self.clock.seconds()
        self._in_receive = True
        try:
            self.core.receive(data, self.last_activity)
            self._handle(self.core.events())
        finally:
            self._in_receive = False
        self._write_out()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        self.core.stop_timers()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        for stream in list(self.streams.values()):
            self.core.close_stream(stream.stream_id, "tunnel connection lost")
            self._handle(self.core.events())
        if not self.closed_deferred.called:
            self.closed_deferred.callback(None)
        if self.on_lost is not None:
            self.on_lost(self, reason)

    def close(self) -> None:
        """Close once flushed, with a bounded linger if the peer stops reading."""
        if self.transport is not None:
            self.endings.close(self.transport)

    def _write_out(self) -> None:
        if self._in_receive:
            return
        data = self.core.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def _run(self) -> None:
        """Handle what the core queued (a local call's events), then send what it wrote."""
        self._handle(self.core.events())
        self._write_out()

    # -- the one timer: PINGs and their deadline -------------------------------------------
    def _arm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()  # a probe may have brought the deadline forward
        self._timer = None
        deadline = self.core.next_deadline()
        if deadline is None or self.closed:
            return
        self._timer = self.clock.callLater(max(0.0, deadline - self.clock.seconds()), self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.closed:
            return
        self.core.tick(self.clock.seconds())
        self._run()
        self._look_for_stalls()
        self._arm()

    def _look_for_stalls(self) -> None:
        """Say which streams have stopped moving (at debug level: an idle session has too)."""
        marks = {sid: self.core.progress(sid) for sid in self.streams}
        for sid, seconds in self.stalls.check(self.clock.seconds(), marks):
            stream = self.streams[sid]
            log.debug(
                "{peer}: stream {sid} to {dest} has not moved for at least {seconds:.0f}s ({state}): {flow}; {ends}",
                peer=self.peer_name,
                sid=sid,
                dest=stream.destination.authority,
                seconds=seconds,
                state=self.core.stream_state(sid).value,
                flow=", ".join(f"{k} {v}" for k, v in self.core.flow(sid).items()),
                ends=stream.ends(),
            )

    # -- IPushProducer for the TLS transport: stop pushing stream data while it is full --
    def pauseProducing(self) -> None:
        self.core.set_paused(True)

    def resumeProducing(self) -> None:
        self.core.set_paused(False)
        self._run()

    def stopProducing(self) -> None:
        self.transport.abortConnection()

    # -- events ---------------------------------------------------------------------
    def _handle(self, events: list[sans_io.Event]) -> None:
        """Turn the core's events into calls on streams, one handler per event type
        (`_ON_EVENT`). An exception while handling one stream resets that stream (and is
        logged once); it never reaches the connection that carries the others."""
        for event in events:
            sid = getattr(event, "sid", -1)
            stream = self.streams.get(sid)
            try:
                if type(event) is sans_io.DataReceived:  # the hot path, without a call
                    self.bytes_received += len(event.data)
                    if stream is not None:
                        stream._receive(event.data)
                else:
                    _ON_EVENT[type(event)](self, event, stream)
            except Exception:
                self._stream_failed(stream if stream is not None else self.streams.get(sid), Failure())

    def _on_blocked(self, event: sans_io.SendBlocked, stream: TunnelStream | None) -> None:
        if stream is not None:
            stream._pause_producer()

    def _on_unblocked(self, event: sans_io.SendUnblocked, stream: TunnelStream | None) -> None:
        if stream is not None:
            stream._resume_producer()

    def _on_remote_end(self, event: sans_io.RemoteEnded, stream: TunnelStream | None) -> None:
        if stream is not None:
            stream._deliver_eof()

    def _on_local_end(self, event: sans_io.LocalEnded, stream: TunnelStream | None) -> None:
        if stream is not None:
            stream._local_end()

    def _on_stream_closed(self, event: sans_io.StreamClosed, stream: TunnelStream | None) -> None:
        if stream is None:
            return
        del self.streams[event.sid]
        reason = ConnectionDone(event.reason) if event.clean else ConnectionLost(event.reason or "stream closed")
        stream._closed(Failure(reason))

    def _on_requested(self, event: sans_io.StreamRequested, stream: TunnelStream | None) -> None:
        stream = self.streams[event.sid] = TunnelStream(self, event.sid, event.destination)
        stream.ready.addErrback(lambda f: None)
        if self.on_stream is not None:  # the server's; an agent's core refuses requests
            self.on_stream(stream)

    def _on_answered(self, event: sans_io.StreamAnswered, stream: TunnelStream | None) -> None:
        if stream is not None and not stream.ready.called:
            stream.ready.callback(stream)

    def _on_refused(self, event: sans_io.StreamRefused, stream: TunnelStream | None) -> None:
        if stream is not None and not stream.ready.called:
            stream.ready.errback(event.error)

    def _on_peer_ready(self, event: sans_io.PeerReady, stream: TunnelStream | None) -> None:
        if self.on_ready is not None:
            self.on_ready(self)

    def _on_draining(self, event: sans_io.Draining, stream: TunnelStream | None) -> None:
        if self.on_drain is not None:
            self.on_drain(self)

    def _on_finished(self, event: sans_io.Finished, stream: TunnelStream | None) -> None:
        if event.alarming:
            log.warn("closing {peer}: {reason}", peer=self.peer_name, reason=event.reason)
        elif event.reason:
            log.info("{peer}: {reason}", peer=self.peer_name, reason=event.reason)
        if not self.closed:
            self._in_receive = False
            self._write_out()
            self.close()

    def _on_ping_overdue(self, event: sans_io.PingOverdue, stream: TunnelStream | None) -> None:
        log.warn("no PING answer from {peer} in {t:.1f}s; dropping the connection", peer=self.peer_name, t=event.waited)
        self.transport.abortConnection()

    def _stream_failed(self, stream: TunnelStream | None, failure: Failure) -> None:
        """One line naming the error and where it was raised; then reset that stream."""
        where = failure.frames[-1] if failure.frames else None
        at = f" (at {where[1].rsplit('/', 1)[-1]}:{where[2]} in {where[0]})" if where else ""
        error = f"{type(failure.value).__name__}: {failure.getErrorMessage()}{at}"
        if stream is None:
            log.error(
                "{peer}: error handling the tunnel connection's event: {error}; ignored",
                peer=self.peer_name,
                error=error,
            )
            return
        log.error(
            "{peer}: error handling the stream to {dest}: {error}; that stream is reset, the others carry on",
            peer=self.peer_name,
            dest=stream.destination.authority,
            error=error,
        )
        if not stream.closed:
            stream.abortConnection()

    def _acknowledge(self, stream: TunnelStream) -> None:
        if self.closed:
            return
        self.core.acknowledge(stream.stream_id)
        self._write_out()

    # -- server side: answering a CONNECT ----------------------------------------------
    def respond(self, stream: TunnelStream) -> None:
        if stream.closed:
            return
        self.core.respond(stream.stream_id)
        events = self.core.events()
        if not stream.closed and not stream.ready.called:
            stream.ready.callback(stream)
        self._handle(events)
        self._write_out()

    def refuse(self, stream: TunnelStream, status: int, reason: str) -> None:
        self.core.refuse(stream.stream_id, status, reason)
        self._run()

    # -- agent side: opening a stream --------------------------------------------------
    def open_stream(self, destination: Destination, protocol: Protocol | None) -> TunnelStream:
        """Send CONNECT and attach `protocol` at once: it may write before the 200 arrives
        (None: the caller attaches one later; what arrives meanwhile waits). After a quiet
        spell a PING goes with it, so a connection that died unseen is noticed within
        probe_timeout (then replaced)."""
        if self.closed:
            raise OpenFailed(503, "tunnel connection is closing")
        sid = self.core.open_stream(destination)
        stream = self.streams[sid] = TunnelStream(self, sid, destination)
        due = self.core.next_deadline()
        self.core.probe(self.clock.seconds(), self.limits.probe_timeout)
        self._write_out()
        if self.core.next_deadline() != due:  # the probe brought the deadline forward
            self._arm()
        if protocol is not None:
            stream.attach(protocol)
        return stream

    # -- graceful drain ------------------------------------------------------------------
    def begin_drain(self) -> None:
        """Server: refuse new streams (SETTINGS max streams 0), let open ones finish."""
        if self.closed:
            return
        self.core.begin_drain()
        self._run()


# What the mux does with each of the core's events but DataReceived (handled inline, the
# hot path). Every event type has an entry (a test checks it against sans_io.Event).
_ON_EVENT: dict[type, Callable[[TunnelMux, Any, TunnelStream | None], None]] = {
    sans_io.SendBlocked: TunnelMux._on_blocked,
    sans_io.SendUnblocked: TunnelMux._on_unblocked,
    sans_io.RemoteEnded: TunnelMux._on_remote_end,
    sans_io.LocalEnded: TunnelMux._on_local_end,
    sans_io.StreamClosed: TunnelMux._on_stream_closed,
    sans_io.StreamRequested: TunnelMux._on_requested,
    sans_io.StreamAnswered: TunnelMux._on_answered,
    sans_io.StreamRefused: TunnelMux._on_refused,
    sans_io.PeerReady: TunnelMux._on_peer_ready,
    sans_io.Draining: TunnelMux._on_draining,
    sans_io.Finished: TunnelMux._on_finished,
    sans_io.PingOverdue: TunnelMux._on_ping_overdue,
}
