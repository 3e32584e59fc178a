"""Once one side of a relay is gone, the other gets a bounded linger (issue 14, item 2).

A peer that accepts and never reads must not keep a socket and its buffers forever,
on the server (the destination) or on the agent (the local client); a peer that is
still reading must still get every byte.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
import threading
import time

import pytest
import support
from support import pattern, proxy_connect, wait_until

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)

ESTABLISHED = 1


def tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def Listener(serve) -> support.Listener:
    return support.Listener(serve, receive_buffer=16384, backlog=16)  # a small buffer fills fast


def never_read(conn: socket.socket) -> None:
    pass


def firehose(total: int, taken: threading.Event | None = None):
    """Send `total` bytes; set `taken` once the peer (the server) has acknowledged them all."""

    def serve(conn: socket.socket) -> None:
        try:
            conn.sendall(pattern(total))
            deadline = time.monotonic() + 30
            while taken is not None and time.monotonic() < deadline:
                if fcntl.ioctl(conn.fileno(), termios.TIOCOUTQ, b"\0\0\0\0") == b"\0\0\0\0":
                    taken.set()
                    return
                time.sleep(0.02)
        except OSError:
            pass

    return serve


def fill(sock: socket.socket, seconds: float = 2.0, limit: int = 64 << 20) -> int:
    """Write until the path stops taking bytes (or a bound is reached); returns bytes sent."""
    sock.setblocking(False)
    chunk = b"u" * 65536
    sent, deadline, stalled_since = 0, time.monotonic() + seconds, None
    while sent < limit and time.monotonic() < deadline:
        try:
            sent += sock.send(chunk)
            stalled_since = None
        except BlockingIOError:
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 0.5:
                break
            time.sleep(0.01)
    return sent


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_aborted_upload_to_a_destination_that_never_reads_is_released(pair):
    _server, agent = pair
    sink = Listener(never_read)
    try:
        for _ in range(3):
            client, head = proxy_connect(agent.port, f"127.0.0.1:{sink.port}")
            assert head.startswith(b"HTTP/1.1 200"), head
            assert fill(client) > 1 << 20  # megabytes queued on the way to a reader that never reads
            reset(client)  # the upload is aborted
        wait_until(lambda: len(sink.accepted) == 3, 5)
        # The server lets go of every destination socket (before the fix it kept each forever).
        wait_until(lambda: all(tcp_state(c) != ESTABLISHED for c in sink.accepted), 20, 0.2)
    finally:
        sink.close()
    for proc in pair:
        proc.assert_no_unhandled_errors()


def test_local_client_that_never_reads_is_released_when_the_tunnel_drops(pair):
    server, agent = pair
    origin = Listener(firehose(32 << 20))
    try:
        client, head = proxy_connect(agent.port, f"127.0.0.1:{origin.port}")
        assert head.startswith(b"HTTP/1.1 200"), head
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        time.sleep(1.0)  # the agent now holds bytes this client does not read
        server.process.kill()
        server.process.wait(5)
        wait_until(lambda: tcp_state(client) != ESTABLISHED, 20, 0.2)
        client.close()
    finally:
        origin.close()
    agent.assert_no_unhandled_errors()


def test_a_slow_reader_still_gets_every_byte_after_the_tunnel_drops(pair):
    server, agent = pair
    size = 3 << 20
    taken = threading.Event()
    origin = Listener(firehose(size, taken))
    try:
        client, head = proxy_connect(agent.port, f"127.0.0.1:{origin.port}")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert taken.wait(30)  # the server has every byte, and sends on at once (the stream window is 8 MiB)
        time.sleep(1.0)  # ... so the agent has them all: what it then holds is what the client must get
        server.process.kill()
        server.process.wait(5)
        received = bytearray(head.split(b"\r\n\r\n", 1)[1])  # what came in the same read as the 200
        client.settimeout(10)
        started = time.monotonic()
        deadline = started + 40
        how = "hang"
        while time.monotonic() < deadline:  # ~0.3 MiB/s: slower than the linger, never stalled
            try:
                data = client.recv(16384)
            except ConnectionResetError:
                how = "reset"
                break
            if not data:
                how = "eof"
                break
            received += data
            time.sleep(0.05)
        client.close()
        assert time.monotonic() - started > 3 * 3.0  # read for well over the linger, and never cut off
        assert len(received) == size and received == pattern(size)  # every byte, in order ...
        assert how == "reset"  # ... then a reset: the origin never ended, the tunnel was cut (issue 24)
    finally:
        origin.close()
