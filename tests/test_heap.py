"""Freed heap memory is reused, not faulted in again page by page (tunnel/wire/heap.py)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support import agent_config, make_certs, proxy_connect, server_config, start_twistd, wait_connected

from tunnel.wire import heap

pytestmark = pytest.mark.processes

MiB = 1 << 20

# A process that frees one large mapped block (glibc then raises its thresholds), then
# allocates and frees sixteen 256 KiB buffers at a time, as a bulk receiver does per read.
CHURN = """
import resource, sys
sys.path.insert(0, {root!r})
if {fixed}:
    from tunnel.wire import heap
    print(heap.keep_freed_memory(), file=sys.stderr)
block = b"\\0" * (300 << 10); del block
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    buffers = [b"\\1" * (256 << 10) for _ in range(16)]
    del buffers
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 200)
"""


def faults_per_round(fixed: bool, env: dict | None = None) -> float:
    code = CHURN.format(root=str(Path(__file__).resolve().parent.parent), fixed=fixed)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return float(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_buffers_freed_and_allocated_again_reuse_their_pages():
    as_shipped = faults_per_round(fixed=False)
    if as_shipped < 100:
        pytest.skip(f"this libc does not give the heap back on every round ({as_shipped:.0f} faults)")
    # Sixteen buffers are 1,024 pages: as shipped, nearly every one is a fresh page each round.
    assert faults_per_round(fixed=True) < 50, f"as shipped: {as_shipped:.0f} faults per round"


def test_a_users_own_malloc_settings_are_left_in_force():
    for environ in ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, {"MALLOC_TRIM_THRESHOLD_": "0"}):
        assert heap.keep_freed_memory(environ) == "malloc tuned by the environment: left as set"


def _minor_faults(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


class _Sink:
    """Takes and counts whatever it is sent; a source when asked (`send` bytes on connect)."""

    def __init__(self, send: int = 0) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self._send = send
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(60)
            if self._send:
                chunk = b"\x5a" * MiB
                for _ in range(self._send // MiB):
                    conn.sendall(chunk)
                conn.shutdown(socket.SHUT_WR)
            while data := conn.recv(MiB):
                self.received += len(data)


def _move(agent_port: int, up: int = 0, down: int = 0) -> None:
    end = _Sink(send=down)
    sock, head = proxy_connect(agent_port, f"127.0.0.1:{end.port}", timeout=60)
    assert b" 200 " in head.split(b"\r\n")[0], head
    with sock:
        chunk = b"\xa5" * MiB
        for _ in range(up // MiB):
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
        got = len(head.split(b"\r\n\r\n", 1)[1])  # what came with the answer
        while data := sock.recv(MiB):
            got += len(data)
    assert got == down


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc; /proc")
def test_a_bulk_transfer_through_the_tunnel_does_not_fault_in_its_buffers(tmp_path):
    """Upload and download by turns, as a user does: before the fix the receiving side
    took about 600 page faults per MiB, whichever direction the heap's history made slow."""
    certs = make_certs(tmp_path / "certs")
    server = start_twistd("server", server_config(certs, log_level="info"), tmp_path)
    agent = start_twistd("agent", agent_config(certs, server.port, log_level="info"), tmp_path)
    try:
        wait_connected(agent)
        _move(agent.port, up=8 * MiB)
        _move(agent.port, down=8 * MiB)  # both sides have allocated and freed their buffers
        before = {p.name: (p, _minor_faults(p.process.pid)) for p in (server, agent)}
        for _ in range(2):
            _move(agent.port, up=32 * MiB)
            _move(agent.port, down=32 * MiB)
        faults = {name: (_minor_faults(p.process.pid) - n) / 128 for name, (p, n) in before.items()}
        print("page faults per MiB moved:", faults)
        assert all(per_mib < 20 for per_mib in faults.values()), f"page faults per MiB moved: {faults}"
        assert "heap: malloc keeps up to 16 MiB freed" in agent.log()
    finally:
        agent.stop()
        server.stop()
    agent.assert_no_unhandled_errors()
    server.assert_no_unhandled_errors()
