"""Hostile and broken clients on the agent's proxy port: each gets a clear answer or a
closed connection, the agent stays up with bounded memory, and others keep being served."""

from __future__ import annotations

import resource
import socket
import time

import pytest
from support import agent_config, curl, start_twistd, wait_connected
from test_agent_front import _raw

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        # Request smuggling: two framings at once.
        (
            b"POST http://127.0.0.1:{port}/s HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: "
            b"chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
            b"400",
        ),
        (
            b"POST http://127.0.0.1:{port}/s HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n"
            b"abcde",
            b"400",
        ),
        (b"POST http://127.0.0.1:{port}/s HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", b"400"),
        (
            b"POST http://127.0.0.1:{port}/s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked, identity\r\n\r\n",
            b"501",
        ),
        (b"GET http://127.0.0.1:{port}/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"431"),
        (b"GET http://127.0.0.1:{port}/ HTTP/1.1\r\n" + b"X-A: b\r\n" * 5000 + b"\r\n", b"431"),
        (b"GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", b"400"),
        (b"GET http://127.0.0.1:{port}/ HTTP/9.9\r\nHost: x\r\n\r\n", b"505"),
        # URLs the standard library's parser itself refuses (found by test_properties).
        (b"GET http://[::1/ HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),
        (b"GET http://[not-an-ip]:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),
    ],
)
def test_malformed_framing_is_refused(tunnel, http_origin, request_bytes, status):
    answer = _raw(tunnel.agent.port, request_bytes.replace(b"{port}", str(http_origin.port).encode()))
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] in (status, b"400"), answer[:200]
    assert b"/smuggled" not in answer


def test_bad_chunking_never_reaches_the_origin_as_valid(tunnel, http_origin):
    answer = _raw(
        tunnel.agent.port,
        f"POST http://127.0.0.1:{http_origin.port}/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        f"\r\nZZZ\r\nnot a chunk\r\n".encode(),
    )
    first = answer.split(b"\r\n", 1)[0]
    assert first == b"" or b" 400 " in first + b" " or b" 502 " in first + b" ", answer[:200]


def test_truncated_requests_are_closed(tunnel, http_origin):
    for partial in (b"GET http://127.0.0.1", b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x", b"CONNECT 127.0.0.1:"):
        answer = _raw(tunnel.agent.port, partial)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:100]
    result = curl("-x", tunnel.proxy, f"http://127.0.0.1:{http_origin.port}/fine")
    assert b"/fine" in result.stdout


def test_slowloris_thousand_connections_while_real_requests_are_served(certs, tmp_path, http_origin, tunnel):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 4096)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # the agent inherits it
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 2200, "raise the open-files limit to run this test"
    agent = start_twistd(
        "agent", agent_config(certs, tunnel.server.port, head_timeout="4s", log_level="info"), tmp_path
    )
    slow: list[socket.socket] = []
    try:
        wait_connected(agent)
        before = agent.rss_kb()
        for n in range(1000):
            s = socket.create_connection(("127.0.0.1", agent.port), timeout=10)
            s.sendall(b"GET http://127.0.0.1/ HTTP/1.1\r\nX-Slow-%d: " % n)  # and never finish
            slow.append(s)
        served = 0
        started = time.monotonic()
        while time.monotonic() - started < 2.5:
            result = curl(
                "-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/served", timeout=5
            )
            assert b"/served" in result.stdout, result.stderr
            served += 1
        assert served >= 5
        grown = agent.rss_kb() - before
        assert grown < 40 * 1024, f"RSS grew {grown} KiB for 1000 idle connections"
        # After head_timeout each slow client is told 408 and closed.
        time.sleep(3)
        sample = slow[:50]
        for s in sample:
            s.settimeout(5)
            answer = s.recv(200)
            assert answer.startswith(b"HTTP/1.1 408"), answer
    finally:
        for s in slow:
            s.close()
        assert agent.stop() == 0
    agent.assert_no_unhandled_errors()
