"""SOCKS5 on the agent's port (sniffed from the first byte), through the real tunnel."""

from __future__ import annotations

import socket
import struct

import pytest
from support import curl, free_port

from tunnel.agent import socks


def socks_open(
    port: int, request: bytes, methods: bytes = b"\x00", timeout: float = 10
) -> tuple[socket.socket, bytes, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(bytes([5, len(methods)]) + methods)
    choice = _read(sock, 2)
    if choice[1] != 0:
        return sock, choice, b""
    sock.sendall(request)
    return sock, choice, _read(sock, 10)


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def connect_request(host: str, port: int, atyp: int = socks.ATYP_DOMAIN, command: int = socks.CMD_CONNECT) -> bytes:
    if atyp == socks.ATYP_DOMAIN:
        address = bytes([len(host)]) + host.encode()
    elif atyp == socks.ATYP_IPV4:
        address = socket.inet_aton(host)
    else:
        address = socket.inet_pton(socket.AF_INET6, host)
    return bytes([5, command, 0, atyp]) + address + struct.pack("!H", port)


def test_curl_socks5_hostname_and_socks5(tunnel, http_origin, https_origin):
    proxy = f"127.0.0.1:{tunnel.agent.port}"
    result = curl("--socks5-hostname", proxy, f"http://127.0.0.1:{http_origin.port}/plain")
    assert result.returncode == 0 and b"http-origin" in result.stdout, result.stderr
    result = curl("--socks5", proxy, "--cacert", https_origin.ca, f"https://127.0.0.1:{https_origin.port}/hi")
    assert result.returncode == 0 and b"https-origin" in result.stdout, result.stderr
    # The same port still speaks HTTP.
    result = curl("-x", f"http://{proxy}", f"http://127.0.0.1:{http_origin.port}/plain")
    assert result.returncode == 0 and b"http-origin" in result.stdout


@pytest.mark.parametrize("atyp, host", [(socks.ATYP_IPV4, "127.0.0.1"), (socks.ATYP_DOMAIN, "127.0.0.1")])
def test_bytes_relay_like_ssh_proxycommand(tunnel, echo, atyp, host):
    # What `ssh -o ProxyCommand='nc -X 5 -x 127.0.0.1:PORT %h %p'` does: CONNECT, then raw bytes.
    sock, choice, answer = socks_open(tunnel.agent.port, connect_request(host, echo.port, atyp))
    with sock:
        assert choice == b"\x05\x00" and answer[:2] == b"\x05\x00"
        payload = bytes(range(256)) * 400
        sock.sendall(payload)
        assert _read(sock, len(payload)) == payload


def test_first_bytes_sent_with_the_request_are_kept(tunnel, echo):
    sock = socket.create_connection(("127.0.0.1", tunnel.agent.port), timeout=10)
    with sock:
        sock.sendall(b"\x05\x01\x00" + connect_request("127.0.0.1", echo.port) + b"hello before the reply")
        assert _read(sock, 2) == b"\x05\x00"
        assert _read(sock, 10)[:2] == b"\x05\x00"
        assert _read(sock, 22) == b"hello before the reply"


@pytest.mark.parametrize(
    "request_bytes, reply",
    [
        (connect_request("169.254.169.254", 80, socks.ATYP_IPV4), socks.NOT_ALLOWED),  # egress policy
        (connect_request("::1", 80, socks.ATYP_IPV6), socks.NOT_ALLOWED),  # loopback v6 is not in the allow list
        (connect_request("127.0.0.1", 0, socks.ATYP_IPV4, command=2), socks.COMMAND_NOT_SUPPORTED),  # BIND
        (connect_request("127.0.0.1", 80, socks.ATYP_IPV4, command=3), socks.COMMAND_NOT_SUPPORTED),  # UDP ASSOCIATE
        (b"\x05\x01\x00\x09" + b"\x00" * 6, socks.ADDRESS_TYPE_NOT_SUPPORTED),
        (connect_request("bad host!", 80), socks.HOST_UNREACHABLE),
    ],
)
def test_refusals_are_socks_replies(tunnel, request_bytes, reply):
    sock, choice, answer = socks_open(tunnel.agent.port, request_bytes)
    with sock:
        assert choice == b"\x05\x00"
        assert answer[:2] == bytes([5, reply]), answer
        assert sock.recv(1) == b""  # then closed


def test_a_closed_port_is_connection_refused(tunnel):
    sock, _, answer = socks_open(tunnel.agent.port, connect_request("127.0.0.1", free_port(), socks.ATYP_IPV4))
    with sock:
        assert answer[:2] == bytes([5, socks.CONNECTION_REFUSED])


def test_only_no_authentication_is_offered(tunnel):
    sock, choice, _ = socks_open(tunnel.agent.port, b"", methods=b"\x02")  # username/password only
    with sock:
        assert choice == b"\x05\xff"
        assert sock.recv(1) == b""


def test_garbage_after_the_version_byte_is_closed_and_the_agent_lives_on(tunnel, http_origin):
    for junk in (b"\x05\x00", b"\x05\x01\x00\x04\x01\x00", b"\x05"):
        with socket.create_connection(("127.0.0.1", tunnel.agent.port), timeout=5) as sock:
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)
            data = sock.recv(64)
            while data:
                data = sock.recv(64)  # closed, whatever was said
    result = curl("--socks5-hostname", f"127.0.0.1:{tunnel.agent.port}", f"http://127.0.0.1:{http_origin.port}/plain")
    assert result.returncode == 0


def test_parser_handles_bytes_one_at_a_time():
    parser = socks.Socks5Server()
    data = b"\x05\x01\x00" + connect_request("example.org", 443) + b"xyz"
    events = []
    for i in range(len(data)):
        for event in parser.receive_data(data[i : i + 1]):
            events.append(event)
            if isinstance(event, socks.Greeting):
                assert parser.choose(event) == b"\x05\x00"
                events.extend(parser.receive_data(b""))
    assert [type(e) for e in events] == [socks.Greeting, socks.Connect]
    assert events[1].destination.authority == "example.org:443"
    assert parser.trailing == b"xyz"
