"""Streams that stopped moving (issue 44): `StallWatch` says each stall once, and a relayed
socket's state reads as it is (real loopback sockets, Twisted's TCP transport with and
without eager writes). The mux's use of both, with PINGs keeping the tunnel alive, is in
test_mux."""

from __future__ import annotations

import socket

from test_eager_write import Producer, connected, mode  # noqa: F401 (fixtures: a real TCP connection, both write paths)

from tunnel.wire.stalls import StallWatch, socket_side


def test_a_stream_unchanged_for_the_period_is_reported_once_and_again_only_after_it_moved():
    watch = StallWatch(after=30.0)
    assert watch.check(0.0, {1: ("open", 0, 0), 3: ("open", 0, 0)}) == []
    assert watch.check(15.0, {1: ("open", 0, 0), 3: ("open", 5, 0)}) == []  # 3 moved
    assert watch.check(30.0, {1: ("open", 0, 0), 3: ("open", 5, 0)}) == [(1, 30.0)]
    assert watch.check(45.0, {1: ("open", 0, 0), 3: ("open", 5, 0)}) == [(3, 30.0)]  # 1 is not said twice
    assert watch.check(60.0, {1: ("open", 0, 9), 3: ("open", 5, 0)}) == []  # 1 moved
    assert watch.check(90.0, {1: ("open", 0, 9), 3: ("open", 5, 0)}) == [(1, 30.0)]  # and stalled again


def test_a_stream_that_went_is_forgotten():
    watch = StallWatch(after=30.0)
    watch.check(0.0, {1: "mark"})
    watch.check(15.0, {})  # closed
    assert watch.check(30.0, {1: "mark"}) == []  # a new stream with that id starts afresh


def test_a_relayed_socket_says_what_it_holds_and_that_its_end_waits(connected):  # noqa: F811
    """The state issue 44's lost end was in: bytes queued, the producer paused, a half-close asked for."""
    _reactor, protocol, _peer = connected
    transport = protocol.transport
    assert socket_side(transport) == "0 B not yet delivered"
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    transport.registerProducer(Producer(), True)
    transport.write(b"x" * (2 << 20))  # the peer reads nothing: most of it waits
    transport.loseWriteConnection()
    said = socket_side(transport)
    held = int(said.split(" B ")[0])
    assert (2 << 20) - 65536 < held <= 2 << 20, said
    assert said.endswith("B not yet delivered, its producer paused, write side closing"), said
    transport.unregisterProducer()  # gone: Twisted still says producerPaused, this does not
    assert "producer" not in socket_side(transport)
    assert socket_side(None) == "none" and socket_side(object()) == "none"
