"""A relayed connection ends the way it really ended (issue 24, item 1).

A clean EOF on one side is a FIN on the far side; an abort (a destination's or client's
TCP reset, a process killed with SIGKILL, the tunnel lost) is a TCP reset on the far side,
never a FIN that would make a truncated download or upload look complete. Every front
(CONNECT, SOCKS5, WebSocket, the server's http/1.1 CONNECT) and both directions.
"""

from __future__ import annotations

import queue
import signal
import socket
import ssl
import struct
import threading
import time

import pytest
from support import Listener, pattern, read_head, read_head_exactly, wait_until
from test_socks import connect_request, socks_open

CHUNK = 64 * 1024


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), the way a crashing peer's kernel may."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def ending(sock: socket.socket, seconds: float = 15.0) -> tuple[int, str]:
    """Read to the end: (bytes read, 'eof' | 'reset' | 'hang')."""
    sock.settimeout(seconds)
    total = 0
    try:
        while True:
            data = sock.recv(1 << 20)
            if not data:
                return total, "eof"
            total += len(data)
    except (ConnectionResetError, ssl.SSLEOFError):
        return total, "reset"
    except TimeoutError:
        return total, "hang"


class Destination(Listener):
    """A loopback TCP listener whose connections behave as `serve(dest, conn)` says; what
    they saw is kept in `endings` and `received`."""

    def __init__(self, serve) -> None:
        self.endings: queue.Queue = queue.Queue()
        self.received = 0
        super().__init__(lambda conn: serve(self, conn), backlog=16)


def send_then_reset(size: int):
    def serve(dest: Destination, conn: socket.socket) -> None:
        try:
            conn.sendall(pattern(size))
            time.sleep(0.3)
        except OSError:
            pass
        reset(conn)

    return serve


def stream_forever(dest: Destination, conn: socket.socket) -> None:
    conn.settimeout(30)
    block = pattern(CHUNK)
    try:
        for _ in range(100000):  # bounded: at most 6.4 GB, far beyond what a test reads
            conn.sendall(block)
    except OSError:
        pass
    finally:
        conn.close()


def record_ending(dest: Destination, conn: socket.socket) -> None:
    """Read everything; report how the connection ended."""
    with conn:
        conn.settimeout(30)
        total = 0
        try:
            while True:
                data = conn.recv(1 << 20)
                if not data:
                    dest.endings.put(("eof", total))
                    return
                total += len(data)
                dest.received += len(data)
        except ConnectionResetError:
            dest.endings.put(("reset", total))
        except OSError:
            dest.endings.put(("hang", total))


@pytest.fixture
def shared_pair(tunnel):
    """The session's server and agent, for a test that only cuts and ends its own streams
    (the session's final check for unhandled errors in either reactor sees it too). A test
    that kills, freezes or floods a process takes a `pair` of its own."""
    return tunnel.server, tunnel.agent


@pytest.fixture
def destinations():
    made: list[Destination] = []

    def make(serve) -> Destination:
        made.append(Destination(serve))
        return made[-1]

    yield make
    for d in made:
        d.close()


def open_through(front: str, agent_port: int, authority: str) -> socket.socket:
    host, port = authority.rsplit(":", 1)
    if front == "connect":
        sock = socket.create_connection(("127.0.0.1", agent_port), timeout=10)
        sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        head = read_head_exactly(sock)  # what follows the head is the test's
        assert head.startswith(b"HTTP/1.1 200"), head
        return sock
    sock, _choice, answer = socks_open(agent_port, connect_request(host, int(port)))
    assert answer[:2] == b"\x05\x00", answer
    return sock


FRONTS = ["connect", "socks5"]


@pytest.mark.parametrize("front", FRONTS)
def test_a_destination_reset_mid_download_reaches_the_client_as_a_reset(shared_pair, destinations, front):
    _server, agent = shared_pair
    dest = destinations(send_then_reset(4 << 20))
    for attempt in range(2):  # the second time the destination is known: answered early
        sock = open_through(front, agent.port, dest.authority)
        with sock:
            total, how = ending(sock)
        assert how == "reset", (attempt, total, how)
        assert total <= 4 << 20


@pytest.mark.parametrize("who", ["server", "agent"])
@pytest.mark.parametrize("front", FRONTS)
def test_a_process_killed_mid_download_reaches_the_client_as_a_reset(pair, destinations, front, who):
    server, agent = pair
    dest = destinations(stream_forever)
    sock = open_through(front, agent.port, dest.authority)
    with sock:
        got = 0
        while got < 2 << 20:
            got += len(sock.recv(1 << 20))
        (agent if who == "agent" else server).process.kill()
        total, how = ending(sock)
    assert how == "reset", (total, how)


def upload(sock: socket.socket, stop: threading.Event) -> threading.Thread:
    def run() -> None:
        block = pattern(CHUNK)
        try:
            for _ in range(100000):
                if stop.is_set():
                    return
                sock.sendall(block)
        except OSError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("front", FRONTS)
def test_a_client_reset_mid_upload_reaches_the_destination_as_a_reset(shared_pair, destinations, front):
    _server, agent = shared_pair
    dest = destinations(record_ending)
    for attempt in range(2):
        before = dest.received  # before sending: the relay may deliver some before sendall returns
        sock = open_through(front, agent.port, dest.authority)
        sock.sendall(pattern(1 << 20))
        wait_until(lambda before=before: dest.received >= before + (1 << 20) or not dest.endings.empty(), 10)
        reset(sock)
        how, total = dest.endings.get(timeout=15)
        assert how == "reset", (attempt, how, total)


@pytest.mark.parametrize("who", ["agent", "server"])
def test_a_process_killed_mid_upload_reaches_the_destination_as_a_reset(pair, destinations, who):
    server, agent = pair
    dest = destinations(record_ending)
    sock = open_through("connect", agent.port, dest.authority)
    stop = threading.Event()
    sender = upload(sock, stop)
    try:
        wait_until(lambda: dest.received >= 2 << 20, 10)
        (agent if who == "agent" else server).process.kill()
        how, total = dest.endings.get(timeout=15)
    finally:
        stop.set()
        sock.close()
        sender.join(5)
    assert how == "reset", (how, total)


def test_clean_endings_stay_clean_both_ways(shared_pair, destinations):
    """The control: a complete download ends in EOF, a complete upload in EOF."""
    _server, agent = shared_pair

    def send_then_close(dest: Destination, conn: socket.socket) -> None:
        with conn:
            conn.sendall(pattern(3 << 20))

    down = destinations(send_then_close)
    for front in FRONTS:
        sock = open_through(front, agent.port, down.authority)
        with sock:
            assert ending(sock) == (3 << 20, "eof")
    up = destinations(record_ending)
    for front in FRONTS:
        sock = open_through(front, agent.port, up.authority)
        sock.sendall(pattern(1 << 20))
        sock.shutdown(socket.SHUT_WR)
        assert up.endings.get(timeout=15) == ("eof", 1 << 20)
        assert ending(sock)[1] == "eof"
        sock.close()


# -- the server's http/1.1 CONNECT front: any HTTPS-proxy client ------------------------------


def tls_to_server(certs, server) -> ssl.SSLSocket:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(certs.path("ca.pem"))
    context.load_cert_chain(certs.path("client.pem"), certs.path("client.key"))
    context.set_alpn_protocols(["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return context.wrap_socket(raw, server_hostname="fluidity-server", suppress_ragged_eofs=False)


def connect_over_tls(sock: ssl.SSLSocket, authority: str) -> None:
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = read_head_exactly(sock)
    assert head.startswith(b"HTTP/1.1 200"), head


def test_server_http11_front_passes_a_destination_reset_on_as_a_reset(shared_pair, certs, destinations):
    server, _agent = shared_pair
    dest = destinations(send_then_reset(2 << 20))
    sock = tls_to_server(certs, server)
    with sock:
        connect_over_tls(sock, dest.authority)
        total, how = ending(sock)
    assert how == "reset", (total, how)


@pytest.mark.parametrize("cut", ["tcp reset", "fin without close_notify"])
def test_server_http11_front_passes_a_client_abort_on_as_a_reset(shared_pair, certs, destinations, cut):
    """A TCP reset under TLS, or a bare TCP FIN with no close_notify (a truncation): neither
    is a clean end, so the destination sees a reset."""
    server, _agent = shared_pair
    dest = destinations(record_ending)
    sock = tls_to_server(certs, server)
    connect_over_tls(sock, dest.authority)
    sock.sendall(pattern(256 << 10))
    wait_until(lambda: dest.received >= 256 << 10, 10)
    if cut == "tcp reset":
        reset(sock)
    else:
        sock.shutdown(socket.SHUT_WR)  # SSLSocket.shutdown: a bare TCP FIN, no close_notify
    how, total = dest.endings.get(timeout=15)
    sock.close()
    assert how == "reset", (how, total)


# -- WebSocket: an absolute-form ws:// upgrade relayed raw -------------------------------------


def upgrade_then(serve_after):
    def serve(dest: Destination, conn: socket.socket) -> None:
        if b"\r\n\r\n" not in read_head(conn):
            conn.close()
            return
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
            b"x\r\n\r\n"
        )
        serve_after(dest, conn)

    return serve


def ws_upgrade(agent_port: int, authority: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", agent_port), timeout=10)
    sock.sendall(
        f"GET http://{authority}/ws HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = read_head_exactly(sock)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def test_websocket_destination_reset_reaches_the_client_as_a_reset(shared_pair, destinations):
    _server, agent = shared_pair
    dest = destinations(upgrade_then(send_then_reset(1 << 20)))
    sock = ws_upgrade(agent.port, dest.authority)
    with sock:
        total, how = ending(sock)
    assert how == "reset", (total, how)


def test_websocket_client_reset_reaches_the_destination_as_a_reset(shared_pair, destinations):
    _server, agent = shared_pair
    dest = destinations(upgrade_then(record_ending))
    sock = ws_upgrade(agent.port, dest.authority)
    sock.sendall(pattern(256 << 10))
    wait_until(lambda: dest.received >= 256 << 10, 10)
    reset(sock)
    how, total = dest.endings.get(timeout=15)
    assert how == "reset", (how, total)


@pytest.mark.processes
def test_the_server_stopping_cleanly_still_aborts_streams_it_cuts(certs, tmp_path, destinations):
    """A drain that times out cuts what is left: the client must see that as a reset."""
    from support import agent_config, server_config, start_twistd, wait_connected

    server = start_twistd("server", server_config(certs, drain_timeout="1s"), tmp_path)
    agent = start_twistd("agent", agent_config(certs, server.port), tmp_path)
    try:
        wait_connected(agent)
        dest = destinations(stream_forever)
        sock = open_through("connect", agent.port, dest.authority)
        with sock:
            got = 0
            while got < 1 << 20:
                got += len(sock.recv(1 << 20))
            server.process.send_signal(signal.SIGTERM)
            total, how = ending(sock, 20)
        assert how == "reset", (total, how)
    finally:
        agent.stop()
        server.stop()


def answer_then_record(dest: Destination, conn: socket.socket) -> None:
    """An HTTP origin: one answer, then how the connection ended (keep-alive: the proxy ends it)."""
    with conn:
        conn.settimeout(30)
        try:
            if b"\r\n\r\n" not in read_head(conn):
                dest.endings.put(("eof before a request", 0))
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            while conn.recv(4096):
                pass
            dest.endings.put(("eof", 0))
        except ConnectionResetError:
            dest.endings.put(("reset", 0))


@pytest.mark.processes
def test_a_complete_exchange_never_resets_the_origin(shared_pair, destinations):
    """The control for the other direction: curl's http:// request and a CONNECT whose
    client simply closes end at the origin in a FIN, never a reset."""
    from support import curl

    _server, agent = shared_pair
    dest = destinations(answer_then_record)
    result = curl("-x", f"http://127.0.0.1:{agent.port}", f"http://{dest.authority}/x")
    assert result.stdout == b"ok\n", result
    assert dest.endings.get(timeout=15)[0] == "eof"
    for front in FRONTS:
        sock = open_through(front, agent.port, dest.authority)
        sock.sendall(f"GET /x HTTP/1.1\r\nHost: {dest.authority}\r\n\r\n".encode())
        assert sock.recv(4096).endswith(b"ok\n")
        sock.close()
        assert dest.endings.get(timeout=15)[0] == "eof", front


# -- absolute-form http://: the request and the response bodies ---------------------------------


def head_then_reset(dest: Destination, conn: socket.socket) -> None:
    """An origin that starts a long response and resets partway through it."""
    if b"\r\n\r\n" not in read_head(conn):
        conn.close()
        return
    try:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n" + pattern(1 << 20))
        time.sleep(0.3)
    except OSError:
        pass
    reset(conn)


def http_get(agent_port: int, authority: str, version: str = "1.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", agent_port), timeout=10)
    sock.sendall(f"GET http://{authority}/big HTTP/{version}\r\nHost: {authority}\r\n\r\n".encode())
    return sock


@pytest.mark.parametrize("version", ["1.1", "1.0"])
def test_an_http_origin_reset_mid_body_reaches_the_client_as_a_reset(shared_pair, destinations, version):
    _server, agent = shared_pair
    dest = destinations(head_then_reset)
    with http_get(agent.port, dest.authority, version) as sock:
        total, how = ending(sock)
    assert how == "reset", (total, how)


def test_the_agent_killed_mid_http_body_reaches_the_client_as_a_reset(pair, destinations):
    _server, agent = pair

    def answer_forever(dest: Destination, conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
        stream_forever(dest, conn)

    dest = destinations(answer_forever)
    with http_get(agent.port, dest.authority, "1.0") as sock:  # close-delimited: only the ending tells
        got = 0
        while got < 1 << 20:
            got += len(sock.recv(1 << 20))
        agent.process.kill()
        total, how = ending(sock)
    assert how == "reset", (total, how)


def test_a_client_reset_mid_http_upload_reaches_the_origin_as_a_reset(shared_pair, destinations):
    _server, agent = shared_pair
    dest = destinations(record_ending)
    sock = socket.create_connection(("127.0.0.1", agent.port), timeout=10)
    sock.sendall(
        f"POST http://{dest.authority}/up HTTP/1.1\r\nHost: {dest.authority}\r\nContent-Length: 100000000\r\n"
        f"\r\n".encode()
        + pattern(1 << 20)
    )
    wait_until(lambda: dest.received >= 1 << 20, 10)
    reset(sock)
    how, total = dest.endings.get(timeout=15)
    assert how == "reset", (how, total)


def test_bytes_dropped_when_a_reader_stalls_past_the_linger_end_in_a_reset(shared_pair, destinations):
    """Both sides ended cleanly, but this client stopped reading: once the linger gives up
    on it (3 s without progress), what it then reads must end in a reset: bytes were dropped."""
    _server, agent = shared_pair

    def send_then_close(dest: Destination, conn: socket.socket) -> None:
        with conn:
            conn.sendall(pattern(6 << 20))  # within the stream's window: all of it reaches the agent

    dest = destinations(send_then_close)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # before connecting: a small window
    sock.settimeout(10)
    sock.connect(("127.0.0.1", agent.port))
    with sock:
        sock.sendall(f"CONNECT {dest.authority} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert read_head_exactly(sock).startswith(b"HTTP/1.1 200")
        sock.shutdown(socket.SHUT_WR)  # this side is done too: the relay closes once both are
        time.sleep(9)  # two lingers and more, reading nothing
        total, how = ending(sock)
    assert (how, total < 6 << 20) == ("reset", True), (total, how)


# -- the end of a stream whose reader is slow (issue 44) --------------------------------------
# A relayed socket whose peer reads late holds more than Twisted's 64 KiB when the other side
# ends, so the stream that feeds it is a paused producer at the half-close: the FIN must still
# follow the last byte. Every front, both directions; the server's http/1.1 front is TLS.

LATE = 6 << 20  # past what the kernel's buffers take, within a stream's 8 MiB window
SMALL_BUFFER = 1 << 16
THROUGH = [*FRONTS, "server http/1.1"]


def open_for(through: str, shared_pair, certs, authority: str) -> socket.socket:
    server, agent = shared_pair
    if through == "server http/1.1":
        sock: socket.socket = tls_to_server(certs, server)
        connect_over_tls(sock, authority)
    else:
        sock = open_through(through, agent.port, authority)
    return sock


def send_then_close(size: int):
    def serve(dest: Destination, conn: socket.socket) -> None:
        with conn:
            conn.sendall(pattern(size))

    return serve


def read_late(dest: Destination, conn: socket.socket) -> None:
    """Take nothing for a second (the upload and its end pile up before us), then read it all."""
    time.sleep(1.0)
    record_ending(dest, conn)


@pytest.mark.parametrize("through", THROUGH)
def test_a_download_read_late_still_ends_in_eof(shared_pair, certs, destinations, through):
    dest = destinations(send_then_close(LATE))
    sock = open_for(through, shared_pair, certs, dest.authority)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        time.sleep(1.0)  # the whole download and its END_STREAM reach the agent meanwhile
        assert ending(sock) == (LATE, "eof")


@pytest.mark.parametrize("through", THROUGH)
def test_an_upload_read_late_still_ends_in_eof(shared_pair, certs, destinations, through):
    dest = destinations(read_late)
    dest.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)  # inherited when accepted
    sock = open_for(through, shared_pair, certs, dest.authority)
    with sock:
        sock.sendall(pattern(LATE))
        if isinstance(sock, ssl.SSLSocket):
            sock = sock.unwrap()  # close_notify: TLS's clean end of what it sends
        else:
            sock.shutdown(socket.SHUT_WR)
        assert dest.endings.get(timeout=40) == ("eof", LATE)
        assert ending(sock)[1] == "eof"
