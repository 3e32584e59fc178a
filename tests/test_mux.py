"""The mux in memory (Twisted's iosim and task.Clock): an agent-side and a server-side
TunnelMux joined by fake transports, no sockets."""

from __future__ import annotations

from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.test import iosim

from tunnel.wire import connection as core
from tunnel.wire import mux
from tunnel.wire.addresses import Destination
from tunnel.wire.mux import TunnelMux
from tunnel.wire.stalls import STALL_AFTER


class Collect(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason=None) -> None:
        self.lost = reason


class Explodes(Collect):
    def dataReceived(self, data: bytes) -> None:
        raise ValueError("a handler bug, e.g. a parser meeting a hostile origin")


def pair_in_memory(on_stream):
    clock = Clock()
    quiet = core.TunnelLimits(keepalive_interval=0)
    agent = TunnelMux(client_side=True, clock=clock, limits=quiet)
    server = TunnelMux(client_side=False, clock=clock, on_stream=on_stream, limits=quiet)
    pump = iosim.connect(
        server, iosim.FakeTransport(server, True), agent, iosim.FakeTransport(agent, False), clock=clock
    )
    pump.flush()
    return agent, server, pump


def test_an_exception_in_one_streams_handling_resets_that_stream_only():
    accepted = []

    def on_stream(stream):
        accepted.append(stream)
        stream.attach(Collect())
        stream.mux.respond(stream)

    agent, server, pump = pair_in_memory(on_stream)
    bad, good = Explodes(), Collect()
    bad_stream = agent.open_stream(Destination("bad.example", 80), bad)
    good_stream = agent.open_stream(Destination("good.example", 80), good)
    pump.flush()
    assert len(accepted) == 2
    bad_on_server, good_on_server = accepted
    bad_on_server.write(b"this makes the agent's handler raise")
    good_on_server.write(b"still here")
    pump.flush()

    assert bad_stream.closed and bad.lost is not None  # reset ...
    assert bad_on_server.closed  # ... on both sides (RST_STREAM)
    assert not agent.closed and not server.closed  # the connection carries on
    assert good.data == b"still here" and not good_stream.closed
    good_stream.write(b"and back")
    pump.flush()
    assert good_on_server.protocol.data == b"and back"


def test_a_front_that_raises_on_a_new_stream_resets_that_stream_only():
    def on_stream(stream):
        if stream.destination.host == "bad.example":
            raise RuntimeError("a front's bug while taking the stream")
        stream.attach(Collect())
        stream.mux.respond(stream)

    agent, server, pump = pair_in_memory(on_stream)
    bad, good = Collect(), Collect()
    bad_stream = agent.open_stream(Destination("bad.example", 80), bad)
    good_stream = agent.open_stream(Destination("good.example", 80), good)
    refused = []
    bad_stream.ready.addErrback(refused.append)
    pump.flush()

    assert bad_stream.closed and bad.lost is not None  # the agent sees its stream reset
    assert refused and refused[0].value.status == 502, refused
    assert list(server.streams) == [good_stream.stream_id]  # the server kept no record of it
    assert not agent.closed and not server.closed
    good_stream.write(b"carried")
    pump.flush()
    assert server.streams[good_stream.stream_id].protocol.data == b"carried"


def test_every_event_the_core_emits_has_a_handler_in_the_mux():
    import typing

    from tunnel.wire import connection as core
    from tunnel.wire import mux

    emitted = set(typing.get_args(core.Event))
    assert emitted - set(mux._ON_EVENT) == {core.DataReceived}  # handled inline, the hot path
    assert set(mux._ON_EVENT) <= emitted


# -- a stream that stopped moving is said in the log (issue 44) -------------------------------


class Recorder:
    """A streaming producer writing into a stream: records whether it was paused."""

    def __init__(self) -> None:
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


def stall_lines(events: list[dict]) -> list[str]:
    return [formatEvent(e) for e in events if "has not moved" in e.get("log_format", "")]


def test_a_stream_that_stops_moving_is_logged_once_at_debug_with_where_its_bytes_wait(monkeypatch):
    """While PINGs keep the tunnel alive, a stream whose consumer stopped taking bytes (its
    window spent, bytes queued, its writer paused) is logged once by each side, at debug,
    after STALL_AFTER seconds; a stream that keeps moving is not."""
    events: list[dict] = []
    monkeypatch.setattr(mux, "log", Logger(namespace="fluidity.mux", observer=events.append))
    accepted = []

    def on_stream(stream):
        accepted.append(stream)
        stream.attach(Collect())
        stream.mux.respond(stream)

    clock = Clock()
    limits = core.TunnelLimits(keepalive_interval=5.0, keepalive_timeout=4.0)
    agent = TunnelMux(client_side=True, clock=clock, limits=limits, peer_name="agent's peer")
    server = TunnelMux(client_side=False, clock=clock, on_stream=on_stream, limits=limits, peer_name="server's peer")
    pump = iosim.connect(
        server, iosim.FakeTransport(server, True), agent, iosim.FakeTransport(agent, False), clock=clock
    )
    pump.flush()
    stuck = agent.open_stream(Destination("stuck.example", 443), Collect())
    moving = agent.open_stream(Destination("moving.example", 443), Collect())
    pump.flush()
    stuck_there, _ = accepted
    stuck_there.pauseProducing()  # its consumer takes nothing more: no WINDOW_UPDATE
    writer = Recorder()
    stuck.registerProducer(writer, True)
    stuck.write(b"x" * (core.STREAM_WINDOW + 65536))  # past the window: the rest waits
    pump.flush()
    assert writer.paused

    for _ in range(int(STALL_AFTER * 2)):  # a minute: PINGs answered, one stream moving
        moving.write(b"tick")
        clock.advance(1.0)
        pump.flush()
    assert not agent.closed and not server.closed

    lines = stall_lines(events)
    assert len(lines) == 2, lines  # once on each side, and only the stuck stream
    assert all(e["log_level"] is LogLevel.debug for e in events if "has not moved" in e["log_format"])
    agent_line = next(line for line in lines if line.startswith("agent's peer"))
    server_line = next(line for line in lines if line.startswith("server's peer"))
    assert "stuck.example:443" in agent_line and "send window 0," in agent_line
    assert "queued for a window 65536" in agent_line and "its producer paused" in agent_line
    assert f"received, not taken {core.STREAM_WINDOW}" in server_line and "its reader paused" in server_line

    stuck_there.resumeProducing()  # it moves again, and stalls again once the rest has gone
    for _ in range(int(STALL_AFTER * 2)):
        moving.write(b"tick")
        clock.advance(1.0)
        pump.flush()
    lines = stall_lines(events)
    assert len(lines) == 4, lines  # the new stall, on each side; not a line a tick
    assert all("stuck.example:443" in line for line in lines)
