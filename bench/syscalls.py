"""System calls per new connection through the tunnel (not a test), counted by strace.

    .venv/bin/python bench/syscalls.py [--connections 300]

A server and an agent on loopback, an echo destination; strace -c -f follows each process
while N clients each open a CONNECT through the agent, send 16 bytes, read them back and
close. Prints the calls per connection for each process, by name, after subtracting an
idle period of the same length (keepalive, metrics): what a new connection costs, the
figure to keep beside CPU-ms per connection (bench/compare.py).
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import (
    EchoServer,
    agent_config,
    make_certs,
    proxy_connect,
    server_config,
    start_twistd,
    wait_connected,
)

ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")


def traced(pid: int, out: Path) -> subprocess.Popen:
    return subprocess.Popen(["strace", "-c", "-f", "-q", "-o", str(out), "-p", str(pid)], stderr=subprocess.DEVNULL)


def counts(path: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    for line in path.read_text().splitlines():
        match = ROW.match(line)
        if match and match.group(2) != "total":
            found[match.group(2)] = int(match.group(1))
    return found


def measure(pids: dict[str, int], work: Path, label: str, action) -> dict[str, dict[str, int]]:
    tracers = {name: traced(pid, work / f"{label}-{name}.strace") for name, pid in pids.items()}
    time.sleep(1.0)  # strace attached
    began = time.monotonic()
    action()
    elapsed = time.monotonic() - began
    for tracer in tracers.values():
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
    return {name: counts(work / f"{label}-{name}.strace") for name in pids} | {"_seconds": {"": int(elapsed)}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fluidity-syscalls-"))
    certs = make_certs(work / "certs")
    echo = EchoServer()
    server = start_twistd("server", server_config(certs, log_level="warn"), work)
    agent = start_twistd("agent", agent_config(certs, server.port, log_level="warn"), work)
    wait_connected(agent)
    target = f"127.0.0.1:{echo.port}"
    try:
        sock, _ = proxy_connect(agent.port, target)  # the destination is known: answered early from here on
        sock.close()
        seconds = [0.0]

        def connections() -> None:
            began = time.monotonic()
            for _ in range(args.connections):
                sock, head = proxy_connect(agent.port, target)
                assert head.startswith(b"HTTP/1.1 200"), head
                sock.sendall(b"0123456789abcdef")
                got = b""
                while len(got) < 16:
                    got += sock.recv(64)
                sock.close()
            seconds[0] = time.monotonic() - began

        pids = {"server": server.process.pid, "agent": agent.process.pid}
        busy = measure(pids, work, "busy", connections)
        idle = measure(pids, work, "idle", lambda: time.sleep(seconds[0]))
        print(f"{args.connections} connections in {seconds[0]:.1f}s; system calls per connection (idle subtracted):")
        for name in pids:
            calls = {
                call: (busy[name].get(call, 0) - idle[name].get(call, 0)) / args.connections for call in busy[name]
            }
            total = sum(calls.values())
            top = ", ".join(f"{call} {n:.1f}" for call, n in sorted(calls.items(), key=lambda kv: -kv[1]) if n >= 0.5)
            print(f"  {name}: {total:.1f}  ({top})")
    finally:
        agent.stop()
        server.stop()
        echo.close()


if __name__ == "__main__":
    main()
