"""The agent's proxy port takes a burst of clients while it is busy: none waits for a SYN
retransmission (Twisted's default accept queue of 50 would drop most of them)."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from support import TWISTD, agent_config, server_config, start_twistd, wait_connected

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)

BURST = 300


def test_a_burst_of_clients_while_the_agent_is_busy_is_queued_not_dropped(certs, echo, tmp_path):
    server = start_twistd("server", server_config(certs), tmp_path)
    agent = start_twistd("agent", agent_config(certs, server.port), tmp_path)
    clients: list[socket.socket] = []
    try:
        wait_connected(agent)
        agent.process.send_signal(signal.SIGSTOP)  # busy: accepts nothing for now
        try:
            refused = 0
            for _ in range(BURST):
                s = socket.socket()
                s.settimeout(0.5)  # a dropped SYN is retried after 1 s: this fails then
                try:
                    s.connect(("127.0.0.1", agent.port))
                except OSError:
                    refused += 1
                    s.close()
                    if refused >= 10:
                        break
                    continue
                clients.append(s)
        finally:
            agent.process.send_signal(signal.SIGCONT)
        assert refused == 0, f"{refused} connections of a burst of {BURST} were not queued"
        authority = f"127.0.0.1:{echo.port}".encode()
        for s in clients:
            s.settimeout(15)
            s.sendall(b"CONNECT " + authority + b" HTTP/1.1\r\nHost: " + authority + b"\r\n\r\n")
        deadline = time.monotonic() + 30
        for i, s in enumerate(clients):
            head = b""
            while b"\r\n\r\n" not in head and time.monotonic() < deadline:
                head += s.recv(4096) or b"!"
            assert head.startswith(b"HTTP/1.1 200"), f"client {i}: {head[:80]!r}"
            s.sendall(b"ping %d" % i)
            assert s.recv(64) == b"ping %d" % i
    finally:
        for s in clients:
            s.close()
        assert agent.stop() == 0
        assert server.stop() == 0
    agent.assert_no_unhandled_errors()


# -- port 443 as a user that is not root (issue 25, item 1) -------------------------------


def _server_as_uid_10001(certs, tmp_path, caps: tuple[str, ...]) -> subprocess.CompletedProcess:
    """The server as uid 10001, port 443, in a network namespace of its own (nothing else on
    this machine holds its port 443), the kernel's own ip_unprivileged_port_start (1024) in it."""
    workdir = Path(tempfile.mkdtemp(prefix="fluidity-uid10001-"))  # pytest's tmp_path is root's alone
    workdir.chmod(0o755)
    try:
        return _run_as_uid_10001(certs, workdir, caps)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run_as_uid_10001(certs, workdir: Path, caps: tuple[str, ...]) -> subprocess.CompletedProcess:
    config = server_config(
        certs,
        port=443,
        cert_file="env:FLUIDITY_SERVER_CERT",
        key_file="env:FLUIDITY_SERVER_KEY",
        ca_file="env:FLUIDITY_CA_CERT",
    )
    (workdir / "server.yaml").write_text(yaml.safe_dump(config))
    (workdir / "server.yaml").chmod(0o644)
    env = {
        **os.environ,
        "FLUIDITY_SERVER_CERT": Path(certs.path("server.pem")).read_text(),
        "FLUIDITY_SERVER_KEY": Path(certs.path("server.key")).read_text(),
        "FLUIDITY_CA_CERT": Path(certs.path("ca.pem")).read_text(),
    }
    grant = [f"--inh-caps=+{c}" for c in caps] + [f"--ambient-caps=+{c}" for c in caps]
    serve = shlex.join(
        [
            "setpriv",
            "--reuid",
            "10001",
            "--regid",
            "10001",
            "--clear-groups",
            *grant,
            TWISTD,
            "-n",
            "--pidfile=",
            "fluidity-server",
            "--config",
            str(workdir / "server.yaml"),
        ]
    )
    # Started, then stopped as soon as it says it listens (or after 20 s): a bounded run.
    script = (
        "ip link set lo up; echo 1024 > /proc/sys/net/ipv4/ip_unprivileged_port_start; "
        f"{serve} > {workdir}/log 2>&1 & pid=$!; "
        f"for i in $(seq 1 200); do grep -q 'listening on' {workdir}/log && break; kill -0 $pid 2>/dev/null || break; "
        f"sleep 0.1; done; "
        f"kill -TERM $pid 2>/dev/null; wait $pid; echo exit=$?; cat {workdir}/log"
    )
    return subprocess.run(
        ["unshare", "-n", "sh", "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=60
    )


def _needs_root() -> None:
    assert os.geteuid() == 0 and shutil.which("setpriv") and shutil.which("unshare"), (
        "needs root, setpriv and unshare (util-linux; .ci/run runs as root)"
    )


def test_a_server_on_443_without_the_capability_says_what_it_lacks_in_one_line(certs, tmp_path):
    _needs_root()
    result = _server_as_uid_10001(certs, tmp_path, caps=())
    assert "listening on" not in result.stdout, result.stdout
    lines = [line for line in result.stdout.splitlines() if "cannot listen" in line]
    assert len(lines) == 1, result.stdout
    assert (
        "127.0.0.1:443" in lines[0]
        and "Permission denied" in lines[0]
        and "CAP_NET_BIND_SERVICE" in lines[0]
        and "uid 10001" in lines[0]
    ), lines[0]
    assert "Traceback" not in result.stdout, result.stdout


def test_a_server_holding_cap_net_bind_service_listens_on_443_as_uid_10001(certs, tmp_path):
    """What the image's file capability gives its interpreter (scripts/container-test proves the image itself)."""
    _needs_root()
    result = _server_as_uid_10001(certs, tmp_path, caps=("net_bind_service",))
    assert "server listening on 127.0.0.1:443" in result.stdout or "listening on 127.0.0.1:443" in result.stdout, (
        result.stdout
    )
    assert "cannot listen" not in result.stdout, result.stdout
