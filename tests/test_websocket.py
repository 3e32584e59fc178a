"""WebSocket echo through the agent with a real WebSocket client: ws://, wss://, and the absolute-form upgrade."""

from __future__ import annotations

import socket
import ssl
import threading

import pytest
from support import https_context
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.sync.client import connect
from websockets.sync.server import serve
from websockets.uri import parse_uri

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)


def _echo(ws) -> None:
    for message in ws:
        ws.send(message)


@pytest.fixture(scope="module")
def ws_servers(tmp_path_factory):
    context, ca = https_context(tmp_path_factory.mktemp("ws-ca"))
    plain = serve(_echo, "127.0.0.1", 0)
    secure = serve(_echo, "127.0.0.1", 0, ssl=context)
    for server in (plain, secure):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield plain.socket.getsockname()[1], secure.socket.getsockname()[1], ca
    plain.shutdown()
    secure.shutdown()


def test_ws_through_agent(tunnel, ws_servers):
    port, _, _ = ws_servers
    with connect(f"ws://127.0.0.1:{port}/", proxy=tunnel.proxy, open_timeout=30) as ws:
        for text in ("hello", "x" * 100_000):
            ws.send(text)
            assert ws.recv(timeout=10) == text
        ws.send(b"\x00\x01binary")
        assert ws.recv(timeout=10) == b"\x00\x01binary"


def test_wss_through_agent(tunnel, ws_servers):
    _, port, ca = ws_servers
    context = ssl.create_default_context(cafile=ca)
    with connect(f"wss://127.0.0.1:{port}/", proxy=tunnel.proxy, ssl=context, open_timeout=30) as ws:
        ws.send("secure hello")
        assert ws.recv(timeout=10) == "secure hello"


def test_ws_absolute_form_upgrade(tunnel, ws_servers):
    """How a plain HTTP proxy sees ws:// from some clients: GET http://… with Upgrade."""
    port, _, _ = ws_servers
    protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/chat"))
    request = protocol.connect()
    protocol.send_request(request)
    handshake = protocol.data_to_send()[0]
    handshake = handshake.replace(b"GET /chat ", f"GET http://127.0.0.1:{port}/chat ".encode(), 1)
    with socket.create_connection(("127.0.0.1", tunnel.agent.port), timeout=10) as sock:
        sock.sendall(handshake)

        def receive_until(done) -> None:
            for _ in range(100):
                if done():
                    return
                data = sock.recv(65536)
                assert data, "connection closed early"
                protocol.receive_data(data)
            raise AssertionError("no answer")

        receive_until(lambda: protocol.state is State.OPEN or protocol.handshake_exc is not None)
        assert protocol.handshake_exc is None
        assert [e.status_code for e in protocol.events_received()] == [101]
        protocol.send_text(b"through the upgrade")
        for data in protocol.data_to_send():
            sock.sendall(data)
        messages = []

        def got_echo() -> bool:
            messages.extend(e for e in protocol.events_received() if getattr(e, "data", None))
            return bool(messages)

        receive_until(got_echo)
        assert messages[0].data == b"through the upgrade"
