"""HTTP/2 abuse from a peer holding a valid client certificate: each flood costs bounded
work, closes only the offending connection, and everyone else keeps being served."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest
from h2_raw import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RawH2,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from support import agent_config, curl, server_config, start_twistd, wait_connected

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)

ENHANCE_YOUR_CALM, FLOW_CONTROL_ERROR, PROTOCOL_ERROR = 0xB, 0x3, 0x1


@pytest.fixture(scope="module")
def target(certs, tmp_path_factory, echo, http_origin):
    workdir = tmp_path_factory.mktemp("h2-abuse")
    server = start_twistd("server", server_config(certs, max_streams=50, log_level="info"), workdir)
    agent = start_twistd("agent", agent_config(certs, server.port), workdir)
    wait_connected(agent)
    yield server, agent
    assert agent.stop() == 0
    assert server.stop() == 0
    server.assert_no_unhandled_errors()


def bystander_is_served(agent, http_origin) -> None:
    result = curl("-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/plain")
    assert result.returncode == 0 and b"http-origin" in result.stdout, result.stderr


def attack(server, certs, build) -> tuple[bool, int | None, int]:
    before = server.rss_kb()
    peer = RawH2(server.port, certs)
    try:
        build(peer)
        closed, code = peer.outcome()
    finally:
        peer.close()
    return closed, code, server.rss_kb() - before


def test_rapid_reset(target, certs, echo, http_origin):
    server, agent = target

    def flood(peer):
        frames = []
        for n in range(3000):
            sid = 2 * n + 1
            frames += [peer.connect_headers(sid, f"127.0.0.1:{echo.port}"), RstStreamFrame(sid, error_code=0x8)]
        peer.send_frames(frames)

    closed, code, grown = attack(server, certs, flood)
    assert closed and code == ENHANCE_YOUR_CALM
    assert "more than 2000 stream resets" in server.log()
    assert grown < 64 * 1024  # KiB
    bystander_is_served(agent, http_origin)


def test_continuation_flood(target, certs, http_origin):
    server, agent = target

    def flood(peer):
        frames = [peer.connect_headers(1, "127.0.0.1:9", end_headers=False)]
        frames += [ContinuationFrame(1, b"x" * 1024) for _ in range(5000)]
        peer.send_frames(frames)

    closed, code, grown = attack(server, certs, flood)
    assert closed and code in (PROTOCOL_ERROR, 0x6, ENHANCE_YOUR_CALM, None)  # 0x6: FRAME_SIZE_ERROR
    assert grown < 64 * 1024
    bystander_is_served(agent, http_origin)


@pytest.mark.parametrize(
    "what, frame", [("SETTINGS frames", lambda: SettingsFrame(0)), ("PING frames", lambda: PingFrame(0, b"12345678"))]
)
def test_settings_and_ping_floods(target, certs, http_origin, what, frame):
    server, agent = target
    closed, code, _grown = attack(server, certs, lambda peer: peer.send_frames([frame() for _ in range(2000)]))
    assert closed and code == ENHANCE_YOUR_CALM
    assert f"more than 100 {what}" in server.log()
    bystander_is_served(agent, http_origin)


def test_more_streams_than_allowed(target, certs, http_origin):
    server, agent = target

    def flood(peer):
        peer.send_frames([peer.connect_headers(2 * n + 1, "127.0.0.1:9") for n in range(200)])  # max_streams is 50

    closed, code, _ = attack(server, certs, flood)
    assert closed and code in (PROTOCOL_ERROR, 0x7)  # 0x7: REFUSED_STREAM as a GOAWAY code
    bystander_is_served(agent, http_origin)


def test_window_overflow(target, certs, http_origin):
    server, agent = target
    closed, code, _ = attack(
        server,
        certs,
        lambda peer: peer.send_frames([WindowUpdateFrame(0, window_increment=2**31 - 1) for _ in range(2)]),
    )
    assert closed and code == FLOW_CONTROL_ERROR
    bystander_is_served(agent, http_origin)


def test_empty_data_flood(target, certs, echo, http_origin):
    server, agent = target

    def flood(peer):
        peer.send_frames([peer.connect_headers(1, f"127.0.0.1:{echo.port}")] + [DataFrame(1, b"") for _ in range(5000)])

    closed, code, _ = attack(server, certs, flood)
    assert closed and code == ENHANCE_YOUR_CALM
    assert "more than 1000 empty DATA frames" in server.log()
    bystander_is_served(agent, http_origin)


class HoldingListener:
    """Accepts connections and keeps them open, saying nothing: streams to it stay open."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for s in self.held:
            s.close()


def cpu_seconds(proc) -> float:
    fields = Path(f"/proc/{proc.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def window_update_cost(server, certs, streams: int, port: int, updates: int) -> float:
    """Server CPU seconds for `updates` connection-level WINDOW_UPDATEs with `streams` open."""
    peer = RawH2(server.port, certs, timeout=30)
    try:
        if streams:
            peer.send_frames([peer.connect_headers(2 * n + 1, f"127.0.0.1:{port}") for n in range(streams)])
            assert peer.read_until(lambda f: isinstance(f, HeadersFrame), streams, 60) == streams
        assert peer.sync()
        before = cpu_seconds(server)
        peer.send_frames([WindowUpdateFrame(0, window_increment=1) for _ in range(updates)], batch=1000)
        assert peer.sync(), "the server stopped answering"
        return cpu_seconds(server) - before
    finally:
        peer.close()


def test_window_update_cost_does_not_grow_with_open_streams(certs, tmp_path):
    """Before the fix every WINDOW_UPDATE walked and copied every open stream."""
    holder = HoldingListener()
    server = start_twistd("server", server_config(certs, log_level="info", dial_timeout="60s"), tmp_path)
    try:
        updates = 15000  # under the flood budget: an honest-looking rate
        idle = window_update_cost(server, certs, 0, holder.port, updates)
        busy = window_update_cost(server, certs, 2000, holder.port, updates)
        print(f"server CPU for {updates} WINDOW_UPDATEs: {idle:.2f}s with no stream, {busy:.2f}s with 2000 open")
        assert busy < 3 * idle + 0.3, (idle, busy)
    finally:
        server.stop()
        holder.close()
    server.assert_no_unhandled_errors()


def test_window_update_flood(target, certs, http_origin):
    server, agent = target
    closed, code, _ = attack(
        server,
        certs,
        lambda peer: peer.send_frames([WindowUpdateFrame(0, window_increment=1) for _ in range(25000)], batch=1000),
    )
    assert closed and code == ENHANCE_YOUR_CALM
    assert "more than 20000 WINDOW_UPDATE frames" in server.log()
    bystander_is_served(agent, http_origin)


def test_a_protocol_error_sends_one_goaway(target, certs):
    server, _ = target
    peer = RawH2(server.port, certs)
    try:
        peer.send_frames([peer.connect_headers(2, "127.0.0.1:9")])  # even stream id from a client
        assert peer.read_until(lambda f: isinstance(f, GoAwayFrame), 2, 3) == 1
    finally:
        peer.close()


def test_repeated_refusals_are_summarised_in_the_log(certs, tmp_path):
    server = start_twistd("server", server_config(certs, egress_allow=["127.0.0.1:1"]), tmp_path)
    peer = RawH2(server.port, certs)
    try:
        peer.send_frames([peer.connect_headers(2 * n + 1, "127.0.0.1:9") for n in range(500)])
        assert peer.read_until(lambda f: isinstance(f, HeadersFrame), 500, 30) == 500
    finally:
        peer.close()
        server.stop()
    refused = [line for line in server.log().splitlines() if "egress refused" in line]
    assert 1 <= len(refused) <= 20, len(refused)
