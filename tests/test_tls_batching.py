"""TLS record batching in memory (Twisted's iosim, real TLS 1.3 with the project's own
certificates): one transport write per application write, one delivery per read, the
same bytes in the same order as Twisted's own protocol, and Twisted's own code wherever
the protocol is not the one the batching was written against."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import error, ssl, task
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.test import iosim

from tunnel.wire import patches, tls_batching
from tunnel.wire.tls_batching import BatchedBufferingTLS, BatchedTLS

KIB = 1024


class Collector(Protocol):
    """What the application above TLS saw: each delivery's size, then how it ended."""

    def __init__(self) -> None:
        self.deliveries: list[int] = []
        self.data = bytearray()
        self.ended = None

    def dataReceived(self, data: bytes) -> None:
        assert self.ended is None, "data after the connection was lost"
        self.deliveries.append(len(data))
        self.data += data

    def connectionLost(self, reason=None) -> None:
        self.ended = reason


def _options(certs):
    def read(name):
        return Path(certs.path(name)).read_bytes()

    ca = ssl.Certificate.loadPEM(read("ca.pem"))

    def mine(name):
        return ssl.PrivateCertificate.loadPEM(read(f"{name}.pem") + read(f"{name}.key"))

    server = mine("server").options(ca)
    server.requireCertificate = True
    client = ssl.optionsForClientTLS("fluidity-server", trustRoot=ca, clientCertificate=mine("client"))
    return server, client


def pair(certs, server_class=BatchedTLS, client_class=BatchedTLS, handshake=True):
    """A server and a client TLS protocol over iosim, handshake done unless told."""
    server_options, client_options = _options(certs)
    clock = task.Clock()
    server_factory = TLSMemoryBIOFactory(server_options, False, Factory.forProtocol(Collector), clock=clock)
    server_factory.protocol = server_class
    client_factory = TLSMemoryBIOFactory(client_options, True, Factory.forProtocol(Collector), clock=clock)
    client_factory.protocol = client_class
    server, client = server_factory.buildProtocol(None), client_factory.buildProtocol(None)
    server_transport = iosim.FakeTransport(server, isServer=True)
    pump = iosim.connect(
        server, server_transport, client, iosim.FakeTransport(client, isServer=False), clock=clock, greet=handshake
    )
    if handshake:
        pump.flush()
        assert server._handshakeDone and client._handshakeDone
    return server, client, server_transport, pump


@pytest.fixture(autouse=True)
def fresh_check():
    registry = patches.registry()
    registry.reset(tls_batching.PATCH.name)
    yield
    registry.reset(tls_batching.PATCH.name)


def test_it_was_written_against_this_twisted():
    assert tls_batching.applies(), "Twisted changed: re-measure, re-check and re-fingerprint tls_batching"


def test_a_large_write_leaves_as_one_transport_write_and_arrives_as_one_delivery(certs):
    server, client, server_transport, pump = pair(certs)
    payload = os.urandom(256 * KIB)
    server_transport.stream.clear()
    server.write(payload)
    assert len(server_transport.stream) == 1  # Twisted's own: 16, one per 16 KiB record
    pump.flush()
    assert bytes(client.wrappedProtocol.data) == payload
    assert client.wrappedProtocol.deliveries == [len(payload)]  # Twisted's own: 16 deliveries


def test_twisted_own_protocol_makes_a_write_per_record(certs):
    """The measurement the batching answers, on the same harness."""
    server, client, server_transport, pump = pair(certs, TLSMemoryBIOProtocol, TLSMemoryBIOProtocol)
    server_transport.stream.clear()
    server.write(os.urandom(256 * KIB))
    assert len(server_transport.stream) == 16
    pump.flush()
    assert client.wrappedProtocol.deliveries == [16 * KIB] * 16


@given(
    writes=st.lists(st.integers(min_value=0, max_value=300 * KIB), min_size=1, max_size=6),
    replies=st.lists(st.integers(min_value=0, max_value=70 * KIB), max_size=4),
)
def test_every_byte_arrives_in_order_both_ways(certs, writes, replies):
    for server_class, client_class in ((BatchedTLS, BatchedBufferingTLS), (TLSMemoryBIOProtocol, BatchedTLS)):
        server, client, _, pump = pair(certs, server_class, client_class)
        sent = [os.urandom(n) for n in writes]
        answered = [os.urandom(n) for n in replies]
        for chunk in sent:
            server.write(chunk)
        for chunk in answered:
            client.write(chunk)
        pump.flush()
        assert bytes(client.wrappedProtocol.data) == b"".join(sent)
        assert bytes(server.wrappedProtocol.data) == b"".join(answered)


def test_a_write_before_the_handshake_is_held_then_sent_whole(certs):
    server, client, _, pump = pair(certs, handshake=False)
    early = os.urandom(100 * KIB)
    client.write(early)  # OpenSSL wants the server's answer first: WantReadError, kept for later
    assert client._appSendBuffer
    pump.flush()
    assert bytes(server.wrappedProtocol.data) == early


def test_data_before_close_notify_arrives_first_and_the_end_is_clean(certs):
    server, client, _, pump = pair(certs)
    payload = os.urandom(200 * KIB)
    seen = client.wrappedProtocol
    server.write(payload)
    server.loseConnection()  # close_notify right behind the data: one read holds both
    pump.flush()
    assert bytes(seen.data) == payload
    assert seen.ended is not None and seen.ended.check(error.ConnectionDone)


def test_data_before_a_forged_record_arrives_first_and_the_end_is_an_error(certs):
    server, client, server_transport, _ = pair(certs)
    server_transport.stream.clear()
    good = os.urandom(40 * KIB)
    server.write(good)
    server.write(os.urandom(4 * KIB))  # one record
    first, second = server_transport.stream
    forged = second[:-1] + bytes([second[-1] ^ 1])  # the last record's tag no longer matches
    server_transport.stream.clear()
    seen = client.wrappedProtocol
    client.dataReceived(first + forged)
    assert bytes(seen.data) == good
    client.connectionLost(error.ConnectionLost())
    assert seen.ended is not None and not seen.ended.check(error.ConnectionDone)


def test_twisted_own_code_runs_when_a_replaced_method_changed(certs, monkeypatch):
    original = TLSMemoryBIOProtocol._write

    def changed(self, data):
        return original(self, data)

    monkeypatch.setattr(TLSMemoryBIOProtocol, "_write", changed)
    assert not tls_batching.applies()
    server, client, server_transport, pump = pair(certs)
    server_transport.stream.clear()
    payload = os.urandom(64 * KIB)
    server.write(payload)
    assert len(server_transport.stream) == 4  # Twisted's slicing, through the changed method
    pump.flush()
    assert bytes(client.wrappedProtocol.data) == payload


def test_a_missing_attribute_or_source_is_a_refusal(monkeypatch):
    monkeypatch.delattr(TLSMemoryBIOProtocol, "_shutdownTLS")
    assert "_shutdownTLS" in tls_batching.PATCH.unfit()
    monkeypatch.undo()
    assert tls_batching.PATCH.unfit() is None
    monkeypatch.setattr(patches.inspect, "getsource", lambda _: (_ for _ in ()).throw(OSError("no source")))
    assert "not the version it was written against" in tls_batching.PATCH.unfit()
    assert not tls_batching.applies()


def test_the_agent_class_still_gathers_small_writes_for_a_reactor_turn(certs):
    server, client, _, pump = pair(certs, BatchedTLS, BatchedBufferingTLS)
    assert issubclass(BatchedBufferingTLS, BufferingTLSTransport)
    for _ in range(50):
        client.write(b"x" * 100)
    pump.flush()
    assert bytes(server.wrappedProtocol.data) == b"x" * 5000
    assert len(server.wrappedProtocol.deliveries) == 1


@pytest.mark.processes
def test_speedups_off_runs_every_library_as_shipped():
    """FLUIDITY_LIBRARY_SPEEDUPS=off: the baseline bench/compare.py measures against."""
    code = (
        "import hyperframe.frame as f, twisted.internet.tcp as tcp; "
        "before = (f._raw_data_repr, tcp.Connection.write, tcp.BaseClient.doConnect); "
        "import tunnel.taps; tunnel.taps._speed_up_writes(); "
        "from tunnel.wire import patches, tls_batching; "
        "assert (f._raw_data_repr, tcp.Connection.write, tcp.BaseClient.doConnect) == before, 'patched'; "
        "assert '_body_repr' not in vars(f.DataFrame), 'DATA repr patched'; "
        "assert not tls_batching.applies(), 'batching on'; print('as shipped')"
    )
    env = {**os.environ, "FLUIDITY_LIBRARY_SPEEDUPS": "off"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.stdout.strip() == "as shipped", done.stderr
