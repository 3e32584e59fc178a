"""Eager TCP writes, on real loopback sockets with a reactor of the test's own (turned by hand,
so "before the reactor turns" can be checked)."""

from __future__ import annotations

import socket
import time

import pytest
from twisted.internet import tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import ClientFactory, Protocol

from tunnel.wire import eager_write, patches


class Recorder(Protocol):
    def __init__(self) -> None:
        self.made = False
        self.lost = None

    def connectionMade(self) -> None:
        self.made = True

    def connectionLost(self, reason) -> None:
        self.lost = reason


class Producer:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


@pytest.fixture(params=["eager", "twisted"])
def mode(request, patched):
    if request.param == "eager":
        patched(eager_write.PATCH.name)  # removed after the test (conftest)
    return request.param


@pytest.fixture
def connected(mode):
    """(reactor, client protocol, raw peer socket): a Twisted TCP client talking to a plain socket."""
    reactor = EPollReactor()
    listener = socket.create_server(("127.0.0.1", 0))
    protocol = Recorder()
    factory = ClientFactory.forProtocol(lambda: protocol)
    factory.noisy = False
    connector = reactor.connectTCP("127.0.0.1", listener.getsockname()[1], factory)
    deadline = time.monotonic() + 5
    while not protocol.made and time.monotonic() < deadline:
        reactor.iterate(0.01)
    assert protocol.made
    peer, _ = listener.accept()
    listener.close()
    yield reactor, protocol, peer
    peer.close()
    connector.disconnect()
    for _ in range(5):
        reactor.iterate(0.01)
    reactor.disconnectAll()


def receive(reactor, peer: socket.socket, n: int, seconds: float = 10) -> bytes:
    """Read n bytes from the peer while turning the reactor (bounded in time)."""
    peer.setblocking(False)
    got = bytearray()
    deadline = time.monotonic() + seconds
    while len(got) < n and time.monotonic() < deadline:
        reactor.iterate(0)
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            time.sleep(0.001)
            continue
        if not chunk:
            break
        got += chunk
    return bytes(got)


def test_a_write_is_on_the_wire_before_the_reactor_turns(connected, mode):
    _reactor, protocol, peer = connected
    protocol.transport.write(b"hello")
    peer.settimeout(0.3)
    try:
        arrived = peer.recv(16)
    except TimeoutError:
        arrived = b""
    # Twisted's own transport waits for the next reactor turn: the control case.
    assert arrived == (b"hello" if mode == "eager" else b"")


def test_order_and_flow_control_hold_when_the_socket_is_full(connected, mode):
    reactor, protocol, peer = connected
    transport = protocol.transport
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    producer = Producer()
    transport.registerProducer(producer, True)
    big = bytes(range(256)) * (8 << 10)  # 2 MiB: more than the socket buffers take before the peer reads
    transport.write(big)
    assert producer.events == ["pause"]  # what is left is queued, over bufferSize
    transport.write(b"tail")
    assert receive(reactor, peer, len(big) + 4) == big + b"tail"
    assert producer.events[-1] == "resume" and "resume" not in producer.events[:-1]


def test_a_write_to_a_reset_connection_is_reported_as_a_lost_connection(connected, mode):
    reactor, protocol, peer = connected
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    peer.close()  # RST
    time.sleep(0.05)
    for _ in range(3):
        protocol.transport.write(b"x" * 1000)  # must not raise
    deadline = time.monotonic() + 5
    while protocol.lost is None and time.monotonic() < deadline:
        reactor.iterate(0.01)
    assert protocol.lost is not None


@pytest.mark.parametrize("producer", [False, True], ids=["no-producer", "streaming-producer"])
def test_a_half_close_with_nothing_queued_is_on_the_wire_before_the_reactor_turns(connected, mode, producer):
    """As a relay does it: the other side's stream still registered as the producer."""
    _reactor, protocol, peer = connected
    if producer:
        protocol.transport.registerProducer(Producer(), True)
    protocol.transport.write(b"last")
    protocol.transport.loseWriteConnection()
    peer.settimeout(0.3)
    got = b""
    try:
        while chunk := peer.recv(16):
            got += chunk
        ended = True
    except TimeoutError:
        ended = False
    # Twisted's own transport sends both a reactor turn later: the control case.
    assert (got, ended) == ((b"last", True) if mode == "eager" else (b"", False))


def test_a_half_close_waits_for_what_is_queued_and_the_peer_can_still_send(connected, mode):
    reactor, protocol, peer = connected
    transport = protocol.transport
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    big = bytes(range(256)) * (8 << 10)  # 2 MiB: queued behind what the socket takes
    transport.write(big)
    transport.loseWriteConnection()
    assert receive(reactor, peer, len(big) + 1) == big  # every byte, then the end
    peer.sendall(b"still open this way")
    for _ in range(20):
        reactor.iterate(0.01)
    assert protocol.lost is None  # half-closed, not closed: the other way still carries bytes


def test_non_bytes_are_refused_as_twisted_does(connected, mode):
    _, protocol, _ = connected
    with pytest.raises(TypeError):
        protocol.transport.write("text")


START_TLS_PROBE = """
import socket, ssl, sys, threading
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor, ssl as twisted_ssl
from twisted.internet.protocol import Factory, Protocol
from tunnel.wire import eager_write, pki
if sys.argv[1] == "eager":
    assert eager_write.install()
ca_cert, ca_key = pki.make_ca("eager-write test CA")
cert, key = pki.issue(ca_cert, ca_key, "server", server=True, dns_names=("localhost",), ip_addresses=("127.0.0.1",))
pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)
options = twisted_ssl.PrivateCertificate.loadPEM(pem).options()
class StartsTls(Protocol):
    def connectionMade(self):
        self.transport.startTLS(options)
        self.transport.write(b"secret")
port = reactor.listenTCP(0, Factory.forProtocol(StartsTls), interface="127.0.0.1")
got = []
def client():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        raw = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
        with raw, context.wrap_socket(raw) as tls:
            got.append(tls.recv(64).decode())
    except Exception as e:
        got.append(repr(e))
    reactor.callFromThread(reactor.stop)
reactor.callWhenRunning(lambda: threading.Thread(target=client, daemon=True).start())
reactor.callLater(10, reactor.stop)
reactor.run()
print(got)
"""


@pytest.mark.processes
def test_start_tls_is_honoured(mode):
    """A transport that starts TLS must send TLS records, never the plaintext it is given."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", START_TLS_PROBE, mode], capture_output=True, timeout=30)
    assert done.stdout.decode().strip() == "['secret']", done.stdout + done.stderr


def test_installable_on_the_pinned_twisted():
    registry, name = patches.registry(), eager_write.PATCH.name
    assert eager_write.install() and registry.active(name)
    assert tcp.Connection.write is eager_write._write
    assert tcp.Connection.loseWriteConnection is eager_write._lose_write_connection
    registry.remove(name)  # both back as Twisted has them: inherited, not copied down
    assert "write" not in vars(tcp.Connection) and "loseWriteConnection" not in vars(tcp.Connection)


def test_not_installed_when_twisted_changed(monkeypatch):
    monkeypatch.delattr(eager_write.abstract.FileDescriptor, "_writeDisconnected")
    assert not eager_write.install()
    assert "_writeDisconnected" in patches.registry().refusal(eager_write.PATCH.name)
    assert "write" not in vars(tcp.Connection) and "loseWriteConnection" not in vars(tcp.Connection)


def test_not_installed_over_another_write_method(monkeypatch):
    def write(self, data):  # a Twisted whose write is not the one eager writes were made for
        abstract_write(self, data)

    abstract_write = eager_write.abstract.FileDescriptor.write
    monkeypatch.setattr(tcp.Connection, "write", write)
    assert not eager_write.install()
    assert tcp.Connection.write is write
    assert "loseWriteConnection" not in vars(tcp.Connection)  # all or nothing


def test_not_installed_when_the_half_close_it_relies_on_changed(monkeypatch):
    def do_write(self):  # a Twisted whose doWrite finishes a half-close some other way
        return None

    monkeypatch.setattr(eager_write.abstract.FileDescriptor, "doWrite", do_write)
    assert not eager_write.install()
    assert "FileDescriptor.doWrite is not the version it was written against" in patches.registry().refusal(
        eager_write.PATCH.name
    )
