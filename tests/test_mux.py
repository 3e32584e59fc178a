"""The mux in memory (Twisted's iosim and task.Clock): an agent-side and a server-side
TunnelMux joined by fake transports, no sockets."""

from __future__ import annotations

from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.test import iosim

from tunnel.wire import connection as core
from tunnel.wire.addresses import Destination
from tunnel.wire.mux import TunnelMux


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
