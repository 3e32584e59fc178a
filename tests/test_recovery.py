"""The tunnel connection's retransmission timeout floor (issue 24, item 4).

One lost retransmission on the tunnel's TCP connection stalls every stream until the RTO.
Where the kernel lets a socket lower its floor (Linux 6.15+: TCP_RTO_MIN_US), both ends of
the tunnel do; the kernel's own figure for each live connection (`ss -ti`, "rto:") shows it.
"""

from __future__ import annotations

import re
import socket
import subprocess

from support import read_head_exactly

from tunnel.wire.recovery import RTO_FLOOR, TCP_RTO_MIN_US, lower_rto_floor


def kernel_takes_a_floor() -> bool:
    with socket.socket() as s:
        try:
            s.setsockopt(socket.IPPROTO_TCP, TCP_RTO_MIN_US, 20_000)
        except OSError:
            return False
    return True


def rto_ms(pid: int, port: int) -> list[float]:
    """The kernel's current RTO of each established connection `pid` holds to or from `port`."""
    out = subprocess.run(
        ["ss", "-tinpH", "state", "established", f"( sport = :{port} or dport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = []
    for entry in re.split(r"\n(?=\S)", out):  # one connection: its line and its indented details
        if f"pid={pid}," in entry:
            match = re.search(r"\brto:([\d.]+)", entry)
            assert match, entry
            found.append(float(match.group(1)))
    return found


def exchange(agent_port: int, echo_port: int, rounds: int = 50) -> None:
    """Round trips through the tunnel: the kernel's RTO follows its samples of them."""
    with socket.create_connection(("127.0.0.1", agent_port), timeout=10) as sock:
        sock.sendall(f"CONNECT 127.0.0.1:{echo_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert read_head_exactly(sock).startswith(b"HTTP/1.1 200")
        for _ in range(rounds):
            sock.sendall(b"x" * 4096)
            got = 0
            while got < 4096:
                data = sock.recv(65536)
                assert data
                got += len(data)


def test_both_ends_of_the_tunnel_retransmit_after_tens_of_milliseconds(tunnel, echo):
    port = tunnel.server.port
    exchange(tunnel.agent.port, echo.port)
    ends = rto_ms(tunnel.agent.process.pid, port) + rto_ms(tunnel.server.process.pid, port)
    assert len(ends) >= 2, ends
    if kernel_takes_a_floor():
        # srtt on loopback is microseconds: the RTO is the floor, not Linux's 200 ms.
        assert all(rto < 100 for rto in ends), ends
    else:
        assert all(rto >= 200 for rto in ends), ends  # the kernel's own floor, nothing broken


class _Transport:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def getHandle(self) -> socket.socket:
        return self.sock


def test_the_floor_is_set_on_the_tcp_socket_under_tls_and_refused_quietly_elsewhere():
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, socket.create_connection(listener.getsockname()) as client:
        tls_like = type("TLS", (), {"transport": _Transport(client)})()
        taken = lower_rto_floor(tls_like)
        assert taken == kernel_takes_a_floor()
        if taken:
            # The kernel keeps it in jiffies; read back, it is the floor rounded to one.
            assert abs(client.getsockopt(socket.IPPROTO_TCP, TCP_RTO_MIN_US) - RTO_FLOOR * 1e6) < 10_000
    left, right = socket.socketpair()
    with left, right:
        assert lower_rto_floor(_Transport(left)) is False  # not TCP: nothing to set
    assert lower_rto_floor(object()) is False  # no socket at all (an in-memory transport)
