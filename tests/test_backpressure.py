"""Flow control is real backpressure: a client that stops reading makes neither side buffer without bound."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from support import proxy_connect

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)


class Firehose:
    """Writes as fast as the socket takes it, counting what the kernel accepted."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.sent = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        block = b"x" * (1 << 20)
        conn.settimeout(20)
        deadline = time.monotonic() + 20
        try:
            while self.sent < 2 << 30 and time.monotonic() < deadline:
                self.sent += conn.send(block)
        except OSError:
            pass
        conn.close()


def test_slow_reader_bounds_memory_on_both_sides(tunnel):
    hose = Firehose()
    before = tunnel.agent.rss_kb() + tunnel.server.rss_kb()
    sock, head = proxy_connect(tunnel.agent.port, f"127.0.0.1:{hose.port}")
    assert head.startswith(b"HTTP/1.1 200")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    time.sleep(3)  # the client reads nothing
    stalled = hose.sent
    time.sleep(1)
    growth_mb = (tunnel.agent.rss_kb() + tunnel.server.rss_kb() - before) / 1024
    # The origin is stopped by flow control, long before 2 GiB...
    assert hose.sent - stalled < 8 << 20, (stalled, hose.sent)
    assert hose.sent < 256 << 20
    # ...and what is held in between is about one stream window, not the whole transfer.
    assert growth_mb < 64, growth_mb
    # Reading resumes the flow.
    sock.settimeout(10)
    got = 0
    while got < 64 << 20:
        data = sock.recv(1 << 20)
        assert data
        got += len(data)
    sock.close()
