"""The tunnel's protocol core, sans-IO: one HTTP/2 connection carrying CONNECT streams.

Like `h2` and `h11` it does no I/O and reads no clock. It is fed the peer's bytes and the
current time (`receive`, `tick`) and told what the local side wants (`open_stream`,
`respond`, `refuse`, `send`, `end`, `acknowledge`, `reset`, `begin_drain`); it answers
with events, and with the bytes to send (`data_to_send`). It keeps the stream table and
each stream's state, the send queues and flow control (a stream's bytes go out only within
the peer's windows; received bytes are acknowledged only when the local side says they
were taken), the flood budgets, the PING deadline and the drain. `mux.TunnelMux` is the
thin Twisted protocol around it: socket I/O, one timer, and each stream as a transport.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import struct
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from tunnel.wire.addresses import BadAddress, Destination, parse_authority
from tunnel.wire.refusals import OpenFailed, http_status

__all__ = [
    "CONNECTION_TRANSITIONS",
    "CONNECTION_WINDOW",
    "DEFAULT_LIMITS",
    "FLOOD_LIMITS",
    "MAX_FRAME",
    "STREAM_TRANSITIONS",
    "STREAM_WINDOW",
    "ConnectionInput",
    "ConnectionState",
    "ConnectionStateError",
    "DataReceived",
    "Draining",
    "Event",
    "Finished",
    "LocalEnded",
    "PeerReady",
    "PingOverdue",
    "RemoteEnded",
    "SendBlocked",
    "SendUnblocked",
    "Stream",
    "StreamAnswered",
    "StreamClosed",
    "StreamInput",
    "StreamRefused",
    "StreamRequested",
    "StreamState",
    "StreamStateError",
    "TunnelConnection",
    "TunnelLimits",
    "proxy_status",
    "reason_from",
]

STREAM_WINDOW = 8 << 20  # per stream: enough for ~80 Mbit/s at 100 ms without stalling
CONNECTION_WINDOW = 32 << 20  # shared by all streams of one agent
MAX_FRAME = 1 << 18
MAX_HEADER_LIST = 16 << 10
# A stream opened after this long without a byte from the peer sends a PING with it (`probe`).
PROBE_WHEN_QUIET = 1.0

# Per connection and 10 seconds. Rapid reset (CVE-2023-44487) opens and resets streams
# faster than any client closes connections; SETTINGS and PING floods make us write
# ACKs the peer need not read; empty DATA frames cost work and carry nothing.
FLOOD_WINDOW = 10.0
# WINDOW_UPDATE: an honest h2 peer sends one per half window consumed (4 MiB a stream,
# 16 MiB the connection), a few hundred a second at gigabit rates.
FLOOD_LIMITS = {
    "stream resets": 2000,  # of streams not yet answered: what Rapid Reset sends
    "SETTINGS frames": 100,
    "PING frames": 100,
    "empty DATA frames": 1000,
    "WINDOW_UPDATE frames": 20000,
}


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

    def left(self, now: float) -> int:
        """What may still be spent in the window `now` falls in."""
        return self.limit if now - self.start >= self.window else max(0, self.limit - self.count)


class StreamState(enum.Enum):
    """Where a stream is in its life; END_STREAM each way, then closed."""

    OPEN = "open"
    LOCAL_ENDED = "local ended"  # our END_STREAM is out; the peer may still send
    REMOTE_ENDED = "remote ended"  # the peer's END_STREAM arrived; we may still send
    CLOSED = "closed"


class StreamInput(enum.Enum):
    """What moves a stream from one state to the next."""

    SENT_END = "our END_STREAM went out"
    RECEIVED_END = "the peer's END_STREAM arrived"
    ENDED = "reset, refused, or gone with its connection"


# A stream's whole life, in one place (as h11 keeps its own): any pair not listed is a bug
# in this module, and `Stream.move` raises StreamStateError rather than carry on.
STREAM_TRANSITIONS: dict[tuple[StreamState, StreamInput], StreamState] = {
    (StreamState.OPEN, StreamInput.SENT_END): StreamState.LOCAL_ENDED,
    (StreamState.OPEN, StreamInput.RECEIVED_END): StreamState.REMOTE_ENDED,
    (StreamState.LOCAL_ENDED, StreamInput.RECEIVED_END): StreamState.CLOSED,
    (StreamState.REMOTE_ENDED, StreamInput.SENT_END): StreamState.CLOSED,
    (StreamState.OPEN, StreamInput.ENDED): StreamState.CLOSED,
    (StreamState.LOCAL_ENDED, StreamInput.ENDED): StreamState.CLOSED,
    (StreamState.REMOTE_ENDED, StreamInput.ENDED): StreamState.CLOSED,
}


class StreamStateError(RuntimeError):
    """A transition the table does not allow: the core's own mistake, never the peer's
    (h2 has refused whatever a peer may not send before it reaches the table)."""


class ConnectionStateError(StreamStateError):
    """A connection step CONNECTION_TRANSITIONS does not have: this module's mistake too."""


class ConnectionState(enum.Enum):
    """Where the connection itself is; the stream table is beside it."""

    STARTING = "starting"  # our preface is out, the peer's SETTINGS not yet in
    OPEN = "open"
    DRAINING = "draining"  # no new streams; the open ones finish
    CLOSED = "closed"  # a GOAWAY went either way after the peer was ready: h2 accepts nothing more
    FAILED = "failed"  # ended before the peer's SETTINGS arrived: TLS or HTTP/2 never worked


class ConnectionInput(enum.Enum):
    PEER_SETTINGS = "the peer's first SETTINGS arrived"
    DRAIN = "a drain began (ours, or the peer's limit of 0 streams)"
    GOAWAY = "a GOAWAY went either way (an orderly end, a flood, a protocol error)"


CONNECTION_TRANSITIONS: dict[tuple[ConnectionState, ConnectionInput], ConnectionState] = {
    (ConnectionState.STARTING, ConnectionInput.PEER_SETTINGS): ConnectionState.OPEN,
    (ConnectionState.OPEN, ConnectionInput.DRAIN): ConnectionState.DRAINING,
    (ConnectionState.STARTING, ConnectionInput.GOAWAY): ConnectionState.FAILED,
    (ConnectionState.OPEN, ConnectionInput.GOAWAY): ConnectionState.CLOSED,
    (ConnectionState.DRAINING, ConnectionInput.GOAWAY): ConnectionState.CLOSED,
}


@dataclass(slots=True)
class Stream:
    sid: int
    destination: Destination
    state: StreamState = StreamState.OPEN
    outbox: deque[bytes] = field(default_factory=deque)  # chunks as written: sent without copying when they fit
    end_queued: bool = False  # END_STREAM waits behind the outbox
    unacked: int = 0  # received, not yet acknowledged (the consumer has not taken it)
    acked: int = 0  # received and acknowledged: with `unacked`, all that has arrived
    delivered: int = 0  # bytes sent within the peer's window: how a closing stream shows progress
    answered: bool = False  # the CONNECT was answered 200
    blocked: bool = False  # bytes wait for a window (SendBlocked said, SendUnblocked not yet)

    def move(self, what: StreamInput) -> StreamState:
        """Take one step of the table; raises StreamStateError on a step it does not have."""
        try:
            self.state = STREAM_TRANSITIONS[(self.state, what)]
        except KeyError:
            raise StreamStateError(f"stream {self.sid}: {what.value} while {self.state.value}") from None
        return self.state

    @property
    def closed(self) -> bool:
        return self.state is StreamState.CLOSED

    @property
    def local_ended(self) -> bool:
        return self.state in (StreamState.LOCAL_ENDED, StreamState.CLOSED)

    @property
    def remote_ended(self) -> bool:
        return self.state in (StreamState.REMOTE_ENDED, StreamState.CLOSED)


# -- events: what the core tells the side that does I/O ----------------------------------------
@dataclass(slots=True)
class StreamRequested:  # server: a valid CONNECT; answer with respond() or refuse()
    sid: int
    destination: Destination


@dataclass(slots=True)
class StreamAnswered:  # agent: the server answered 200
    sid: int


@dataclass(slots=True)
class StreamRefused:  # agent: the CONNECT will not be carried
    sid: int
    error: OpenFailed


@dataclass(slots=True)
class DataReceived:
    sid: int
    data: bytes


@dataclass(slots=True)
class RemoteEnded:  # the peer half-closed
    sid: int


@dataclass(slots=True)
class LocalEnded:  # our END_STREAM went out
    sid: int


@dataclass(slots=True)
class StreamClosed:  # gone from the table; `clean` when both ends finished
    sid: int
    reason: str
    clean: bool


@dataclass(slots=True)
class SendBlocked:  # bytes wait for a window: pause whoever writes into this stream
    sid: int


@dataclass(slots=True)
class SendUnblocked:
    sid: int


@dataclass(slots=True)
class PeerReady:  # the peer's SETTINGS arrived: TLS and HTTP/2 both work
    pass


@dataclass(slots=True)
class Draining:  # no new streams on this connection
    pass


@dataclass(slots=True)
class Finished:  # the GOAWAY is queued: close the connection once it is sent
    reason: str = ""  # what to log: empty for an orderly end
    alarming: bool = False  # the peer misbehaved (a warning), rather than said goodbye


@dataclass(slots=True)
class PingOverdue:  # the peer did not answer a PING in time: abort the connection
    waited: float = 0.0  # seconds since that PING was sent


Event = (
    StreamRequested
    | StreamAnswered
    | StreamRefused
    | DataReceived
    | RemoteEnded
    | LocalEnded
    | StreamClosed
    | SendBlocked
    | SendUnblocked
    | PeerReady
    | Draining
    | Finished
    | PingOverdue
)


def proxy_status(reason: str) -> str:
    """RFC 9209 Proxy-Status value carrying our one-line reason."""
    detail = reason.replace("\\", "\\\\").replace('"', '\\"')
    return f'fluidity; details="{detail}"'


def reason_from(headers: dict[bytes, bytes]) -> str:
    value = headers.get(b"proxy-status", b"").decode("utf-8", "replace")
    start = value.find('details="')
    if start < 0:
        return ""
    text = value[start + 9 :]
    return text[: text.rfind('"')].replace('\\"', '"').replace("\\\\", "\\") if '"' in text else text


@dataclass(frozen=True)
class TunnelLimits:
    """What one tunnel connection is allowed and how it keeps watch, as one value built once
    from a role's settings (`of`); the defaults serve connections made in memory."""

    max_streams: int = 2000  # the server's SETTINGS_MAX_CONCURRENT_STREAMS (the agent advertises none)
    keepalive_interval: float = 15.0  # PING the peer this often (0: never)
    keepalive_timeout: float = 10.0  # a PING unanswered this long is overdue
    probe_timeout: float = 3.0  # a stream opened after a quiet second PINGs; unanswered this long, replace

    @classmethod
    def of(cls, settings: object, *, client_side: bool) -> TunnelLimits:
        """Every limit of the role from its settings, by field name. A limit the settings do not
        hold is an error at start (a renamed setting must not quietly fall back to a default)."""
        values = {}
        for name in (f.name for f in dataclasses.fields(cls)):
            if name in (SERVER_ONLY_LIMITS if client_side else AGENT_ONLY_LIMITS):
                continue
            if not hasattr(settings, name):
                raise TypeError(f"{type(settings).__name__} has no setting {name!r}, which the tunnel core needs")
            values[name] = getattr(settings, name)
        return cls(**values)


# Limits that belong to one role only: the other keeps the default, which it never uses.
SERVER_ONLY_LIMITS = frozenset({"max_streams"})  # only a server limits the streams its peer opens
AGENT_ONLY_LIMITS = frozenset({"probe_timeout"})  # only the agent opens streams, and probes first


DEFAULT_LIMITS = TunnelLimits()

P = ParamSpec("P")


def _queued(
    verb: Callable[Concatenate[TunnelConnection, P], list[Event]],
) -> Callable[Concatenate[TunnelConnection, P], None]:
    """An input (the peer's bytes, the time, a local verb) whose events wait in the queue
    until `events()` takes them: none can be dropped by a caller that ignores a return value."""

    def queued(self: TunnelConnection, /, *args: P.args, **kwargs: P.kwargs) -> None:
        self._pending.extend(verb(self, *args, **kwargs))

    queued.__name__, queued.__qualname__, queued.__doc__ = verb.__name__, verb.__qualname__, verb.__doc__
    return queued


class TunnelConnection:
    """One HTTP/2 CONNECT connection's state; `client_side` for the agent."""

    def __init__(self, *, client_side: bool, limits: TunnelLimits = DEFAULT_LIMITS) -> None:
        self._client_side = client_side
        self._limits = limits
        self._pending: list[Event] = []  # what happened, in order, until `events()` takes it
        self._keepalive_interval, self._keepalive_timeout = limits.keepalive_interval, limits.keepalive_timeout
        max_streams = limits.max_streams
        self._streams: dict[int, Stream] = {}
        # Streams with bytes queued that a window kept back, in round-robin order: a window
        # opening visits these only, so its cost does not grow with the number of streams.
        self._waiting: OrderedDict[int, Stream] = OrderedDict()
        self._state = ConnectionState.STARTING
        self._paused = False  # the transport is full: stream data waits
        self._budgets = {what: Budget(limit, FLOOD_WINDOW) for what, limit in FLOOD_LIMITS.items()}
        # The agent keeps its own resets of unanswered streams under the server's budget for
        # them, so that clients cancelling faster than that wait a moment instead of the
        # server ending the connection that carries everyone's streams.
        self._own_resets = Budget(FLOOD_LIMITS["stream resets"] * 9 // 10, FLOOD_WINDOW)
        self._now = 0.0  # the time the latest timed input (start, receive, tick, probe) carried
        self._ping_ids = itertools.count(1)
        self._ping_at: float | None = None
        self._ping_deadline: float | None = None
        self._ping_sent: float | None = None  # when the PING now awaiting its ACK was sent
        self._last_heard = 0.0  # when the peer's bytes last arrived
        # Inbound headers come from the peer and are checked; outbound ones are ours, built well-formed.
        config = h2.config.H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_inbound_headers=True,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self._h2 = h2.connection.H2Connection(config=config)
        settings = {
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        }
        if not client_side:
            settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = max_streams
        # The agent sets no stream limit: with push off a server opens no streams anyway (the
        # core resets any it tries), and h2 checks the limit against every HEADERS frame on a
        # stream id it has pruned, so a limit of 0 made the server's late answer to a stream
        # the agent had reset end the whole connection (issue 39; upstream/h2-closed-stream-limit.md).
        self._h2.local_settings = h2.settings.Settings(client=client_side, initial_values=settings)
        # Settings given before the preface count as already in force; h2 only syncs this on ACK.
        self._h2.max_inbound_frame_size = MAX_FRAME

    # -- the connection ------------------------------------------------------------------
    def _move(self, what: ConnectionInput) -> None:
        """Take one step of CONNECTION_TRANSITIONS; a step it does not have is this module's bug."""
        try:
            self._state = CONNECTION_TRANSITIONS[(self._state, what)]
        except KeyError:
            raise ConnectionStateError(f"connection: {what.value} while {self._state.value}") from None

    def _end(self) -> None:
        """A GOAWAY went (or came): nothing more is read or sent on any stream."""
        if not self.terminated:
            self._move(ConnectionInput.GOAWAY)

    def start(self, now: float) -> None:
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        if self._keepalive_interval > 0:
            self._ping_at = now + self._keepalive_interval
        self._last_heard = self._now = now

    def data_to_send(self) -> bytes:
        return self._h2.data_to_send()

    def events(self) -> list[Event]:
        """Everything that happened since the last call, in order: act on each. Every input
        (`receive`, `tick` and the local verbs) queues its events here and returns nothing."""
        taken, self._pending = self._pending, []
        return taken

    @_queued
    def receive(self, data: bytes, now: float) -> list[Event]:
        """The peer's bytes in, events out (the bytes to answer with wait in data_to_send)."""
        if self.terminated:
            return []
        self._last_heard = self._now = now
        out: list[Event] = []
        try:
            for event in self._h2.receive_data(data):
                self._dispatch(event, now, out)
                if self.terminated:
                    break
        except h2.exceptions.ProtocolError as e:
            self._end()  # the rest of what this peer sends is not read
            # h2 queues its own GOAWAY for errors in what it received: one is enough.
            state = getattr(getattr(self._h2, "state_machine", None), "state", None)
            if state is not h2.connection.ConnectionState.CLOSED:
                try:
                    self._h2.close_connection(error_code=getattr(e, "error_code", h2.errors.ErrorCodes.PROTOCOL_ERROR))
                except h2.exceptions.ProtocolError:
                    pass
            out.append(Finished(f"HTTP/2 protocol error: {str(e) or type(e).__name__}", alarming=True))
        return out

    def next_deadline(self) -> float | None:
        """When `tick` next has something to do."""
        times = [t for t in (self._ping_at, self._ping_deadline) if t is not None]
        return min(times) if times else None

    @_queued
    def tick(self, now: float) -> list[Event]:
        """PING the peer every keepalive_interval; one unanswered for keepalive_timeout is overdue."""
        self._now = now
        if self._ping_deadline is not None and now >= self._ping_deadline:
            self._ping_deadline = self._ping_at = None
            return [PingOverdue(now - (self._ping_sent if self._ping_sent is not None else now))]
        if self._ping_at is not None and now >= self._ping_at:
            self._ping_at = now + self._keepalive_interval
            if self._ping_deadline is None and not self.terminated and not self._ping(now, self._keepalive_timeout):
                self._ping_at = None  # the connection is closing; nothing to keep alive
        return []

    def probe(self, now: float, timeout: float, quiet: float = PROBE_WHEN_QUIET) -> None:
        """A stream is about to open: when the peer has been quiet for `quiet` seconds, make
        sure the connection still works, within `timeout` (a PING now, or the one already
        awaiting its ACK given the shorter deadline). A middlebox that forgot an idle flow
        drops what we send without a word; this notices in seconds, not at the next PING."""
        self._now = now
        if self.terminated or now - self._last_heard < quiet:
            return
        if self._ping_deadline is not None:
            self._ping_deadline = min(self._ping_deadline, now + timeout)
            return
        self._ping(now, timeout)

    def _ping(self, now: float, timeout: float) -> bool:
        try:
            self._h2.ping(struct.pack(">Q", next(self._ping_ids)))
        except h2.exceptions.ProtocolError:
            return False
        self._ping_sent, self._ping_deadline = now, now + timeout
        return True

    def stop_timers(self) -> None:
        self._ping_at = self._ping_deadline = None

    @_queued
    def set_paused(self, paused: bool) -> list[Event]:
        self._paused = paused
        return [] if paused else self._flush_all()

    @_queued
    def begin_drain(self) -> list[Event]:
        """Server: refuse new streams (SETTINGS max streams 0), let open ones finish."""
        if self._state is not ConnectionState.OPEN:  # a connection still starting has no streams to finish
            return [Draining(), *self._finish_drain()] if self._state is ConnectionState.STARTING else []
        self._h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 0})
        return self._start_draining()

    def _start_draining(self) -> list[Event]:
        self._move(ConnectionInput.DRAIN)
        return [Draining()] + (self._finish_drain() if not self._streams else [])

    def _finish_drain(self) -> list[Event]:
        if self.terminated:
            return []
        self._end()
        try:
            self._h2.close_connection()
        except h2.exceptions.ProtocolError:
            pass
        return [Finished()]

    def _flooding(self, what: str, now: float, out: list[Event]) -> bool:
        """Spend from `what`'s budget; when it runs out, GOAWAY ENHANCE_YOUR_CALM."""
        if self._budgets[what].spend(now):
            return False
        self._end()
        self._h2.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        out.append(Finished(f"more than {FLOOD_LIMITS[what]} {what} in {FLOOD_WINDOW:g}s", alarming=True))
        return True

    # -- what the peer sent ----------------------------------------------------------------
    def _dispatch(self, event: h2.events.Event, now: float, out: list[Event]) -> None:
        """One h2 event to its handler (events a tunnel does not use are dropped)."""
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event, now, out)

    def _on_data(self, event: h2.events.DataReceived, now: float, out: list[Event]) -> None:
        if not event.data and not event.stream_ended and self._flooding("empty DATA frames", now, out):
            return
        stream = self._streams.get(event.stream_id)
        if stream is None:
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            return
        stream.unacked += event.flow_controlled_length
        out.append(DataReceived(stream.sid, event.data))
        if event.stream_ended:
            self._remote_end(stream, out)

    def _on_stream_ended(self, event: h2.events.StreamEnded, now: float, out: list[Event]) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None and not stream.remote_ended:  # a DATA frame's END_STREAM came first
            self._remote_end(stream, out)

    def _on_reset(self, event: h2.events.StreamReset, now: float, out: list[Event]) -> None:
        stream = self._streams.get(event.stream_id)
        # Rapid Reset opens streams and resets them before their answer; only a server has
        # streams opened by its peer. The agent's own streams reset by the server cost it nothing.
        rapid = stream is None or not stream.answered
        if event.remote_reset and rapid and not self._client_side and self._flooding("stream resets", now, out):
            return
        if stream is None:
            return
        code = event.error_code
        name = getattr(code, "name", str(code))
        if not stream.answered and self._client_side:
            error = (
                OpenFailed(503, "server refused the stream (draining); retry")
                if code == h2.errors.ErrorCodes.REFUSED_STREAM
                else OpenFailed(502, f"stream reset by peer ({name})")
            )
            out.append(StreamRefused(stream.sid, error))
        # RFC 9113 §8.1: NO_ERROR after the peer's END_STREAM only asks us to stop
        # sending: the stream ended cleanly. Any other reset is an abort.
        clean = code == h2.errors.ErrorCodes.NO_ERROR and stream.remote_ended
        self._close(stream, "" if clean else f"stream reset by peer ({name})", clean, out)

    def _on_window(self, event: h2.events.WindowUpdated, now: float, out: list[Event]) -> None:
        if self._flooding("WINDOW_UPDATE frames", now, out):
            return
        if event.stream_id == 0:
            out.extend(self._flush_all())
        elif event.stream_id in self._streams:
            out.extend(self._flush(event.stream_id))

    def _on_settings(self, event: h2.events.RemoteSettingsChanged, now: float, out: list[Event]) -> None:
        if self._flooding("SETTINGS frames", now, out):
            return
        if self._state is ConnectionState.STARTING:
            self._move(ConnectionInput.PEER_SETTINGS)
            out.append(PeerReady())
        changed = event.changed_settings
        limit = changed.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
        if self._client_side and limit is not None and limit.new_value == 0 and self._state is ConnectionState.OPEN:
            out.extend(self._start_draining())
        if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in changed:
            out.extend(self._flush_all())

    def _on_ping(self, event: h2.events.PingReceived, now: float, out: list[Event]) -> None:
        self._flooding("PING frames", now, out)  # h2 has queued the ACK; a flood closes the connection

    def _on_ping_ack(self, event: h2.events.PingAckReceived, now: float, out: list[Event]) -> None:
        self._ping_deadline = self._ping_sent = None

    def _on_goaway(self, event: h2.events.ConnectionTerminated, now: float, out: list[Event]) -> None:
        self._end()
        name = getattr(event.error_code, "name", event.error_code)
        out.append(Finished(f"the peer closed the tunnel connection ({name})"))

    def _on_request_event(self, event: h2.events.RequestReceived, now: float, out: list[Event]) -> None:
        self._on_request(event, out)

    def _on_response_event(self, event: h2.events.ResponseReceived, now: float, out: list[Event]) -> None:
        self._on_response(event, out)

    def _on_request(self, event: h2.events.RequestReceived, out: list[Event]) -> None:
        sid = event.stream_id
        headers = dict(event.headers)
        if self._client_side:
            self._h2.reset_stream(sid, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        if self.draining:
            self._h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        if headers.get(b":method") != b"CONNECT" or b":protocol" in headers:
            self._answer(
                sid,
                405,
                "only CONNECT is supported: use this server as a proxy that tunnels (curl --proxy https://SERVER "
                "--proxytunnel)",
            )
            return
        try:
            destination = parse_authority(headers.get(b":authority", b""))
        except BadAddress as e:
            self._answer(sid, 400, str(e))
            return
        stream = self._streams[sid] = Stream(sid, destination)
        if event.stream_ended:
            stream.move(StreamInput.RECEIVED_END)
        out.append(StreamRequested(sid, destination))

    def _on_response(self, event: h2.events.ResponseReceived, out: list[Event]) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None or stream.answered:
            return
        headers = dict(event.headers)
        try:
            status = int(headers.get(b":status", b"0"))
        except ValueError:
            status = 0
        if status == 200:
            stream.answered = True
            out.append(StreamAnswered(stream.sid))
        else:
            reason = reason_from(headers) or f"server answered {status}"
            stream.answered = True  # answered, with a refusal: the stream ends as the server closes it
            out.append(StreamRefused(stream.sid, OpenFailed(http_status(status), reason)))

    def _answer(self, sid: int, status: int, reason: str) -> None:
        self._h2.send_headers(
            sid, [(b":status", str(status).encode()), (b"proxy-status", proxy_status(reason).encode())], end_stream=True
        )

    # -- what a stream is now (values, never the record) --------------------------------------
    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def peer_ready(self) -> bool:
        """The peer's SETTINGS arrived (TLS and HTTP/2 both worked), whatever happened since."""
        return self._state not in (ConnectionState.STARTING, ConnectionState.FAILED)

    @property
    def draining(self) -> bool:
        """A drain began (either side): no new streams."""
        return self._state is ConnectionState.DRAINING

    @property
    def terminated(self) -> bool:
        """A GOAWAY went either way: h2 accepts nothing more."""
        return self._state in (ConnectionState.CLOSED, ConnectionState.FAILED)

    @property
    def open_streams(self) -> int:
        """Streams the table still holds (a closed one is forgotten)."""
        return len(self._streams)

    def stream_state(self, sid: int) -> StreamState:
        """CLOSED too for a stream the table no longer has."""
        stream = self._streams.get(sid)
        return StreamState.CLOSED if stream is None else stream.state

    def delivered(self, sid: int) -> int:
        """Bytes sent on `sid` within the peer's window (0 once it is gone)."""
        stream = self._streams.get(sid)
        return 0 if stream is None else stream.delivered

    def queued(self, sid: int) -> int:
        """Bytes written to `sid` that wait for a window."""
        stream = self._streams.get(sid)
        return 0 if stream is None else sum(len(chunk) for chunk in stream.outbox)

    def progress(self, sid: int) -> tuple[StreamState, int, int]:
        """What changes whenever `sid` moves: its state, bytes sent, bytes received."""
        stream = self._streams.get(sid)
        if stream is None:
            return StreamState.CLOSED, 0, 0
        return stream.state, stream.delivered, stream.acked + stream.unacked

    def flow(self, sid: int) -> dict[str, int | bool]:
        """Where `sid`'s bytes wait, for a log line about a stream that stopped moving."""
        stream = self._streams.get(sid)
        if stream is None:
            return {}
        try:
            send_window = self._h2.local_flow_control_window(sid)
            receive_window = self._h2.remote_flow_control_window(sid)
        except (h2.exceptions.ProtocolError, KeyError):
            send_window = receive_window = -1  # h2 has forgotten it
        return {
            "sent": stream.delivered,
            "received": stream.acked + stream.unacked,
            "send window": send_window,
            "connection send window": self._h2.outbound_flow_control_window,
            "peer's send window": receive_window,
            "queued for a window": self.queued(sid),
            "END_STREAM queued": stream.end_queued,
            "received, not taken": stream.unacked,
            "transport full": self._paused,
        }

    # -- what the local side wants -------------------------------------------------------------
    def open_stream(self, destination: Destination) -> int:
        """Agent: send CONNECT; bytes may be sent on it before the 200 arrives."""
        if self.draining or self.terminated:
            raise OpenFailed(503, "tunnel connection is closing")
        if not self._own_resets.left(self._now):
            raise OpenFailed(
                503,
                f"more than {self._own_resets.limit} connections were cancelled before their answer in "
                f"{FLOOD_WINDOW:g}s; new ones wait a few seconds (the server takes more for an attack)",
            )
        sid = self._h2.get_next_available_stream_id()
        try:
            self._h2.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", destination.authority.encode())])
        except h2.exceptions.TooManyStreamsError:
            raise OpenFailed(503, "the server's stream limit is reached") from None
        self._streams[sid] = Stream(sid, destination)
        return sid

    @_queued
    def respond(self, sid: int) -> list[Event]:
        """Server: the destination answered: 200, then whatever waits to be sent."""
        stream = self._streams.get(sid)
        if stream is None or stream.closed:
            return []
        if self.terminated:  # a GOAWAY went either way: h2 sends nothing more
            out: list[Event] = []
            self._close(stream, "tunnel connection is closing", False, out)
            return out
        self._h2.send_headers(sid, [(b":status", b"200")])
        stream.answered = True
        return self._flush(sid)

    @_queued
    def refuse(self, sid: int, status: int, reason: str) -> list[Event]:
        """Server: answer the CONNECT with `status` and a Proxy-Status reason."""
        out: list[Event] = []
        stream = self._streams.get(sid)
        if stream is None or stream.closed:
            return out
        if not self.terminated:
            self._answer(sid, status, reason)
            if not stream.remote_ended:
                self._reset_quietly(sid, h2.errors.ErrorCodes.NO_ERROR)
        self._close(stream, reason, True, out)
        return out

    @_queued
    def send(self, sid: int, data: bytes) -> list[Event]:
        stream = self._streams.get(sid)
        if stream is None or stream.closed or stream.end_queued or not data:
            return []
        stream.outbox.append(bytes(data))
        return self._flush(sid)

    @_queued
    def end(self, sid: int) -> list[Event]:
        """Half-close: END_STREAM once the queued bytes have gone."""
        stream = self._streams.get(sid)
        if stream is None or stream.closed or stream.end_queued:
            return []
        stream.end_queued = True
        return self._flush(sid)

    @_queued
    def cancel_if_ended(self, sid: int) -> list[Event]:
        """After a full close: once our END_STREAM is out, stop the peer's direction too
        (RST_STREAM NO_ERROR: an orderly end, not an abort)."""
        out: list[Event] = []
        stream = self._streams.get(sid)
        if stream is not None and stream.state is StreamState.LOCAL_ENDED:
            self._reset_quietly(sid, h2.errors.ErrorCodes.NO_ERROR)
            self._close(stream, "", True, out)
        return out

    @_queued
    def reset(self, sid: int, reason: str) -> list[Event]:
        """Abort a stream (RST_STREAM CANCEL)."""
        out: list[Event] = []
        stream = self._streams.get(sid)
        if stream is not None and not stream.closed:
            self._reset_quietly(sid, h2.errors.ErrorCodes.CANCEL)
            self._close(stream, reason, False, out)
        return out

    @_queued
    def close_stream(self, sid: int, reason: str) -> list[Event]:
        """Forget a stream without telling the peer (its connection is going)."""
        out: list[Event] = []
        stream = self._streams.get(sid)
        if stream is not None:
            self._close(stream, reason, False, out)
        return out

    def acknowledge(self, sid: int) -> None:
        """The consumer took what arrived on `sid`: let the peer send as much again."""
        stream = self._streams.get(sid)
        if stream is not None and stream.unacked and not stream.closed:
            n, stream.unacked = stream.unacked, 0
            stream.acked += n
            self._acknowledge(sid, n)

    def _acknowledge(self, sid: int, n: int) -> None:
        if self.terminated:
            return
        try:
            self._h2.acknowledge_received_data(n, sid)
        except h2.exceptions.ProtocolError:
            pass

    def _reset_quietly(self, sid: int, code: h2.errors.ErrorCodes) -> None:
        stream = self._streams.get(sid)
        if self._client_side and stream is not None and not stream.answered:
            self._own_resets.spend(self._now)  # what the server counts as a rapid reset
        try:
            self._h2.reset_stream(sid, code)
        except h2.exceptions.ProtocolError:
            pass

    # -- sending within the windows --------------------------------------------------------------
    def _flush(self, sid: int) -> list[Event]:
        out: list[Event] = []
        stream = self._streams.get(sid)
        if stream is None or stream.closed:
            return out
        try:
            self._send_within_windows(stream, out)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as e:
            self._close(stream, str(e), False, out)
        self._mark_blocked(stream, bool(stream.outbox) and not stream.closed, out)
        return out

    def _send_within_windows(self, stream: Stream, out: list[Event]) -> None:
        """As much of the outbox as the windows and the transport take; END_STREAM after the last byte."""
        sid, outbox = stream.sid, stream.outbox
        while outbox and not self._paused:
            window = self._h2.local_flow_control_window(sid)
            if window <= 0:
                break
            n = min(window, self._h2.max_outbound_frame_size)
            chunk = outbox.popleft()
            if len(chunk) > n:
                outbox.appendleft(chunk[n:])
                chunk = chunk[:n]
            last = stream.end_queued and not outbox
            self._h2.send_data(sid, chunk, end_stream=last)
            stream.delivered += len(chunk)
            if last:
                self._local_end(stream, out)
        if stream.end_queued and not outbox and not stream.local_ended and not stream.closed:
            self._h2.end_stream(sid)
            self._local_end(stream, out)

    def _mark_blocked(self, stream: Stream, blocked: bool, out: list[Event]) -> None:
        """Keep the stream in the round-robin of those waiting for a window, and say when that changes."""
        if blocked:
            self._waiting[stream.sid] = stream
        else:
            self._waiting.pop(stream.sid, None)
        if stream.blocked is not blocked:
            stream.blocked = blocked
            out.append(SendBlocked(stream.sid) if blocked else SendUnblocked(stream.sid))

    def _flush_all(self) -> list[Event]:
        """Send what waits, stream by stream, until the transport or the connection window is full."""
        out: list[Event] = []
        for _ in range(len(self._waiting)):
            if self._paused or self._h2.outbound_flow_control_window <= 0 or not self._waiting:
                break
            sid, _ = self._waiting.popitem(last=False)
            out.extend(self._flush(sid))  # puts it back at the end if it still has bytes
        return out

    # -- stream life -------------------------------------------------------------------------------
    def _remote_end(self, stream: Stream, out: list[Event]) -> None:
        stream.move(StreamInput.RECEIVED_END)
        out.append(RemoteEnded(stream.sid))
        if stream.closed:
            self._close(stream, "", True, out)

    def _local_end(self, stream: Stream, out: list[Event]) -> None:
        stream.move(StreamInput.SENT_END)
        out.append(LocalEnded(stream.sid))
        if stream.closed:
            self._close(stream, "", True, out)

    def _close(self, stream: Stream, reason: str, clean: bool, out: list[Event]) -> None:
        """Out of the table, once: after its last END_STREAM (already CLOSED) or at a reset."""
        if self._streams.get(stream.sid) is not stream:
            return
        if not stream.closed:
            stream.move(StreamInput.ENDED)
        stream.outbox.clear()
        # Bytes never acknowledged still count against the connection window.
        if stream.unacked:
            n, stream.unacked = stream.unacked, 0
            self._acknowledge(stream.sid, n)
        del self._streams[stream.sid]
        self._waiting.pop(stream.sid, None)
        out.append(StreamClosed(stream.sid, reason, clean))
        if self.draining and not self._streams:
            out.extend(self._finish_drain())


# What each h2 event the tunnel uses does: one handler each, looked up by the event's type.
_HANDLERS: dict[type[h2.events.Event], Callable[[TunnelConnection, Any, float, list[Event]], None]] = {
    h2.events.DataReceived: TunnelConnection._on_data,  # the hot path
    h2.events.StreamEnded: TunnelConnection._on_stream_ended,
    h2.events.RequestReceived: TunnelConnection._on_request_event,
    h2.events.ResponseReceived: TunnelConnection._on_response_event,
    h2.events.StreamReset: TunnelConnection._on_reset,
    h2.events.WindowUpdated: TunnelConnection._on_window,
    h2.events.RemoteSettingsChanged: TunnelConnection._on_settings,
    h2.events.PingReceived: TunnelConnection._on_ping,
    h2.events.PingAckReceived: TunnelConnection._on_ping_ack,
    h2.events.ConnectionTerminated: TunnelConnection._on_goaway,
}
