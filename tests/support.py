"""Test support: real processes, real certificates, real origins, all on 127.0.0.1.

Every server a test talks to is started here on a free loopback port; no test sends
a packet anywhere else. Loops are bounded by count and by time.
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import os
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tunnel.wire import pki

TWISTD = str(Path(sys.executable).with_name("twistd"))
FLUIDITY = str(Path(sys.executable).with_name("fluidity"))


# Ports handed to servers the tests start come from below the kernel's ephemeral range
# (32768-60999 on Linux), one block per xdist worker. A port from the ephemeral range can be
# taken between the check and the server's bind by any outgoing connection's source port on
# the machine (CI once failed so: "Address already in use"); these ports only ever go to a
# bind, and each worker hands out its own.
_PORTS_FROM, _PORTS_TO = 20000, 32000


def _port_block() -> range:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    size = (_PORTS_TO - _PORTS_FROM) // max(workers, 1)
    start = _PORTS_FROM + index * size
    return range(start, start + size)


_port_cursor = {"block": _port_block(), "next": 0}


def _bindable(port: int) -> bool:
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            with socket.socket(family) as s:
                s.bind((host, port))
        except OSError as e:
            if family == socket.AF_INET6 and e.errno == errno.EADDRNOTAVAIL:
                continue  # no IPv6 loopback here
            return False
    return True


def free_port() -> int:
    """A loopback port nothing holds, and that nothing but the test's own bind will take."""
    block = _port_cursor["block"]
    for _ in range(len(block)):
        port = block[_port_cursor["next"] % len(block)]
        _port_cursor["next"] += 1
        if _bindable(port):
            return port
    raise RuntimeError(f"no free port in {block}")


def stop_process(process: subprocess.Popen, grace: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after `grace` seconds; the exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode


def wait_for_port(port: int, seconds: float = 15.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {seconds}s")


def wait_until(predicate, seconds: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {seconds}s")


# -- certificates ------------------------------------------------------------------------


@dataclass
class CertSet:
    directory: Path

    def path(self, name: str) -> str:
        return str(self.directory / name)


def user_home(certs: CertSet, directory: Path) -> Path:
    """A user's HOME whose ~/.config/fluidity/certs holds the agent's certificates."""
    home = directory / "home"
    folder = home / ".config" / "fluidity" / "certs"
    folder.mkdir(parents=True)
    for name in ("client.pem", "client.key", "ca.pem"):
        (folder / name).write_bytes((certs.directory / name).read_bytes())
    os.chmod(folder / "client.key", 0o600)
    return home


def make_certs(directory: Path) -> CertSet:
    pki.init(directory)
    pki.issue_client(directory, "alice")
    other = directory / "other"
    pki.init(other)  # a second, unrelated CA with its own client certificate
    return CertSet(directory)


# -- twistd processes ---------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    process: subprocess.Popen
    log_path: Path
    port: int
    extra: dict = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        return self.process.returncode

    def assert_no_unhandled_errors(self) -> None:
        log = self.log()
        assert "Traceback" not in log and "Unhandled" not in log, (
            f"{self.name} logged an unhandled error:\n{log[-4000:]}"
        )

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


def start_twistd(
    role: str,
    config: dict,
    workdir: Path,
    name: str | None = None,
    args: tuple[str, ...] = (),
    wait: bool = True,
    prefix: tuple[str, ...] = (),
    env: dict | None = None,
) -> Proc:
    name = name or role
    config_path = workdir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = workdir / f"{name}.log"
    port = config.get("port") if role == "server" else config.get("proxy_port")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*prefix, TWISTD, "-n", "--pidfile=", f"fluidity-{role}", "--config", str(config_path), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=None if env is None else {**os.environ, **env},
        )
    proc = Proc(name, process, log_path, port)
    if wait:
        try:
            wait_for_port(port, process=process)
        except Exception:
            proc.stop()
            raise RuntimeError(f"{name} did not start:\n{proc.log()}") from None
    return proc


def server_config(certs: CertSet, **overrides) -> dict:
    config = {
        "host": "127.0.0.1",
        "port": free_port(),
        "cert_file": certs.path("server.pem"),
        "key_file": certs.path("server.key"),
        "ca_file": certs.path("ca.pem"),
        "egress_allow": ["127.0.0.0/8"],
        "log_level": "debug",
        "drain_timeout": "5s",
    }
    config.update(overrides)
    return config


def agent_config(certs: CertSet, server_port: int, **overrides) -> dict:
    config = {
        "proxy_port": free_port(),
        "server_ip": "127.0.0.1",
        "server_port": server_port,
        "cert_file": certs.path("client.pem"),
        "key_file": certs.path("client.key"),
        "ca_file": certs.path("ca.pem"),
        "log_level": "debug",
        "tunnel_wait": "3s",
    }
    config.update(overrides)
    return config


def wait_connected(agent: Proc, seconds: float = 10.0) -> dict:
    import json
    import urllib.request

    def connected():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{agent.port}/health", timeout=2) as r:
                body = json.load(r)
                return body if body["connected"] else None
        except OSError:
            return None

    return wait_until(connected, seconds)


# -- origins --------------------------------------------------------------------------------


def pattern(n: int, seed: int = 0) -> bytes:
    """Deterministic bytes that are not trivially compressible or repetitive at small scale."""
    block = hashlib.sha256(f"fluidity-{seed}".encode()).digest() * 2048  # 64 KiB
    reps, rest = divmod(n, len(block))
    return block * reps + block[:rest]


class OriginHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.startswith("/bytes/"):
            n = int(path.split("/")[2])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            block = pattern(1 << 20)
            sent = 0
            while sent < n:
                chunk = block[: min(len(block), n - sent)]
                self.wfile.write(chunk)
                sent += len(chunk)
        elif path == "/close-delimited":
            body = b"ended by close\n"
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
        else:
            body = (
                f"hello from {self.server.name} {self.path} host={self.headers.get('Host')} "
                f"proxy-conn={self.headers.get('Proxy-Connection')}\n"
            ).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def do_POST(self) -> None:
        digest = hashlib.sha256()
        total = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                data = self.rfile.read(size)
                digest.update(data)
                total += len(data)
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length", "0"))
            while remaining:
                data = self.rfile.read(min(remaining, 1 << 20))
                if not data:
                    break
                digest.update(data)
                total += len(data)
                remaining -= len(data)
        body = f"{total} {digest.hexdigest()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_PUT = do_POST


class _ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class Origin:
    """An HTTP (or, with a context, HTTPS) origin in a background thread."""

    def __init__(self, name: str, context: ssl.SSLContext | None = None) -> None:
        self.server = _ThreadingServer(("127.0.0.1", 0), OriginHandler)
        self.server.name = name
        if context is not None:
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def https_context(directory: Path) -> tuple[ssl.SSLContext, str]:
    """A separate CA for the HTTPS origin: the tunnel must not care, the client must trust it."""
    ca_cert, ca_key = pki.make_ca("origin test CA")
    cert, key = pki.issue(ca_cert, ca_key, "origin", server=True, dns_names=("localhost",), ip_addresses=("127.0.0.1",))
    directory.mkdir(parents=True, exist_ok=True)
    pki.save(directory, "origin-ca", ca_cert, ca_key, force=True)
    issued = pki.save(directory, "origin", cert, key, force=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(issued.cert_path, issued.key_path)
    return context, str(directory / "origin-ca.pem")


class Listener:
    """Accepts on 127.0.0.1 and hands each connection to `serve(conn)` in a thread of its own."""

    def __init__(self, serve, receive_buffer: int | None = None, backlog: int = 256) -> None:
        self.serve = serve
        self.accepted: list[socket.socket] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if receive_buffer is not None:  # inherited by accepted sockets
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.authority = f"127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def read_head_exactly(sock: socket.socket) -> bytes:
    """An HTTP head read a byte at a time: what follows it stays in the socket for the caller."""
    return read_head(sock, chunk=1)


class EchoServer:
    """Plain TCP echo: what goes in comes back, until the client half-closes."""

    def __init__(self) -> None:
        self.connections = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(60)
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        conn.shutdown(socket.SHUT_WR)
                        return
                    conn.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def run(cmd: list[str], timeout: float = 60.0, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, timeout=timeout, **kwargs)


def served_by_a_new_agent(
    config: dict, workdir: Path, origin_port: int, name: str | None = None, env: dict | None = None
) -> Proc:
    """Start an agent with `config`, fetch the http_origin's /plain through it, stop it: the Proc, for its log."""
    agent = start_twistd("agent", config, workdir, name=name, env=env)
    try:
        wait_connected(agent, 20)
        result = curl("-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{origin_port}/plain")
        assert result.returncode == 0 and b"http-origin" in result.stdout, result
    finally:
        assert agent.stop() == 0
    return agent


def curl(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return run(["curl", "-sS", "--max-time", str(int(timeout)), *args], timeout=timeout + 5)


def read_head(sock: socket.socket, chunk: int = 4096) -> bytes:
    """What arrives up to the end of an HTTP head (or until the peer closes)."""
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(chunk)
        if not data:
            break
        head += data
    return head


def proxy_connect(proxy_port: int, authority: str, timeout: float = 10.0) -> tuple[socket.socket, bytes]:
    """Open a CONNECT tunnel through the agent; returns the socket and the proxy's answer head."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    return sock, read_head(sock)


def env_without_proxies() -> dict:
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
