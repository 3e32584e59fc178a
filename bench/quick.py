"""Quick figures for the tunnel on loopback (not a test): bulk download and new-connection
rate through the agent, each as a ratio to the direct path measured in the same run.

    .venv/bin/python bench/quick.py [--mb 500] [--connections 300]

For Fluidity against stunnel, ssh -D and the direct path, see bench/run (bench/compare.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import (
    EchoServer,
    Origin,
    agent_config,
    curl,
    https_context,
    make_certs,
    proxy_connect,
    server_config,
    start_twistd,
    wait_connected,
)


def timed(fn, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=500)
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fluidity-bench-"))
    certs = make_certs(work / "certs")
    context, ca = https_context(work / "origin")
    origin = Origin("bench", context)
    server = start_twistd("server", server_config(certs, log_level="warn"), work)
    agent = start_twistd("agent", agent_config(certs, server.port, log_level="warn"), work)
    wait_connected(agent)
    url = f"https://127.0.0.1:{origin.port}/bytes/{args.mb << 20}"
    try:

        def download(*proxy):
            r = curl(*proxy, "--cacert", ca, "-o", "/dev/null", url, timeout=300)
            assert r.returncode == 0, r.stderr

        direct = timed(download, args.rounds)
        tunnelled = timed(lambda: download("-x", f"http://127.0.0.1:{agent.port}"), args.rounds)

        def connects(port_fn):
            for _ in range(args.connections):
                port_fn()

        import socket

        echo = EchoServer()

        def direct_connect():
            sock = socket.create_connection(("127.0.0.1", echo.port))
            sock.sendall(b"x")
            assert sock.recv(1) == b"x"
            sock.close()

        def tunnel_connect():
            sock, head = proxy_connect(agent.port, f"127.0.0.1:{echo.port}")
            sock.sendall(b"x")
            assert sock.recv(1) == b"x"
            assert head.startswith(b"HTTP/1.1 200")
            sock.close()

        direct_rate = args.connections / timed(lambda: connects(direct_connect), args.rounds)
        tunnel_rate = args.connections / timed(lambda: connects(tunnel_connect), args.rounds)
        print("| scenario | direct | through Fluidity | ratio |")
        print("|---|---|---|---|")
        print(
            f"| {args.mb} MiB HTTPS download (MiB/s) | {args.mb / direct:.0f} | {args.mb / tunnelled:.0f} | "
            f"{direct / tunnelled:.2f} |"
        )
        print(
            f"| sequential new connections + 1-byte echo (per s) | {direct_rate:.0f} | {tunnel_rate:.0f} | "
            f"{tunnel_rate / direct_rate:.2f} |"
        )
        print(f"| RSS after (MiB) | | agent {agent.rss_kb() / 1024:.0f}, server {server.rss_kb() / 1024:.0f} | |")
    finally:
        agent.stop()
        server.stop()
        origin.close()


if __name__ == "__main__":
    main()
