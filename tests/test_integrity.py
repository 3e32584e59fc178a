"""Bytes arrive intact: 200 MB each way, and 200 concurrent streams each with its own payload."""

from __future__ import annotations

import hashlib
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from support import curl, pattern, proxy_connect

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)

SIZE = 200 * 1024 * 1024


def test_200_mb_download_through_connect(tunnel, https_origin):
    expected = hashlib.sha256()
    block = pattern(1 << 20)
    for _ in range(SIZE // len(block)):
        expected.update(block)
    result = curl(
        "-x",
        tunnel.proxy,
        "--cacert",
        https_origin.ca,
        f"https://127.0.0.1:{https_origin.port}/bytes/{SIZE}",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == SIZE
    assert hashlib.sha256(result.stdout).hexdigest() == expected.hexdigest()


def test_200_mb_upload_through_connect(tunnel, https_origin, tmp_path):
    body = tmp_path / "upload.bin"
    with open(body, "wb") as f:
        for i in range(SIZE // (1 << 20)):
            f.write(pattern(1 << 20, seed=i))
    digest = hashlib.sha256(body.read_bytes()).hexdigest()
    result = curl(
        "-x",
        tunnel.proxy,
        "--cacert",
        https_origin.ca,
        "-T",
        str(body),
        f"https://127.0.0.1:{https_origin.port}/upload",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split() == [str(SIZE), digest]


def test_200_concurrent_streams_each_intact(tunnel, echo):
    count, size = 200, 48 * 1024
    barrier = threading.Barrier(count, timeout=60)

    def one(i: int) -> bool:
        payload = pattern(size, seed=1000 + i)
        sock, head = proxy_connect(tunnel.agent.port, f"127.0.0.1:{echo.port}", timeout=60)
        with sock:
            assert head.startswith(b"HTTP/1.1 200"), head
            barrier.wait()  # all 200 streams are open at once before any byte moves
            sender = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)))
            sender.start()
            received = bytearray()
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                received += data
            sender.join(30)
        return bytes(received) == payload

    with ThreadPoolExecutor(max_workers=count) as pool:
        results = list(pool.map(one, range(count), timeout=120))
    assert results == [True] * count
