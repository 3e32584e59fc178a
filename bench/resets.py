"""Clients that cancel, on a delayed and lossy tunnel hop (not a test; issue 39, item 1).

    .venv/bin/python bench/resets.py [--rtt-ms 40] [--loss 1] [--seconds 60] [--streams 40] [--resetters 20]

A browser cancels requests all the time: it sends the CONNECT and resets the connection
before the server's 200 can come back across the real round trip. Such a stream is gone on
the agent when the server's answer, bytes or reset arrive for it; none of that may end the
tunnel connection or touch the streams beside it. Loopback hides it (the answer is back
within microseconds), so the hop here has a round trip: `bench/delay_relay.py` between the
agent and the server, and nftables dropping `--loss` percent of the packets on it, inside a
network namespace of its own (`unshare -n`, as root: it re-executes itself there), so nothing
leaves the machine.

Meanwhile `--streams` workers carry whole exchanges both ways at once (CONNECT and SOCKS5 to
an echo server, absolute-form GETs from an origin), each checked byte for byte, and
`--resetters` workers open a stream by CONNECT, SOCKS5 or absolute-form and reset it (a TCP
RST from the client) within one round trip. It prints how often the tunnel connection was
torn down, and how many exchanges finished intact.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loss import in_own_namespace, lossy, packet_counts, reexec_in_namespace
from support import (
    EchoServer,
    Origin,
    agent_config,
    free_port,
    make_certs,
    pattern,
    read_head,
    server_config,
    start_twistd,
    wait_connected,
    wait_for_port,
)

RELAY = Path(__file__).resolve().parent / "delay_relay.py"
FRONTS = ("connect", "socks5", "absolute-form")


def open_stream(agent_port: int, front: str, authority: str, timeout: float) -> socket.socket:
    """A client connection to the agent with its request for `authority` sent (no answer read,
    except SOCKS5's method choice, which the agent gives at once)."""
    sock = socket.create_connection(("127.0.0.1", agent_port), timeout=timeout)
    host, port = authority.rsplit(":", 1)
    if front == "connect":
        sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    elif front == "socks5":
        sock.sendall(b"\x05\x01\x00")
        if sock.recv(2) != b"\x05\x00":
            raise OSError("SOCKS5: no method accepted")
        name = host.encode()
        sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", int(port)))
    else:
        sock.sendall(f"GET http://{authority}/bytes/65536 HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    return sock


def reset(sock: socket.socket) -> None:
    """Close with a TCP RST, as a browser's cancelled request often does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def exchange(agent_port: int, front: str, echo: EchoServer, origin: Origin, rng: random.Random) -> bool:
    """One whole exchange through `front`, both directions at once where the front allows; True when intact."""
    if front == "absolute-form":
        sock = open_stream(agent_port, front, f"127.0.0.1:{origin.port}", 20)
        with sock:
            head = read_head(sock)
            body = head.split(b"\r\n\r\n", 1)[1]
            while len(body) < 65536:
                data = sock.recv(65536)
                if not data:
                    break
                body += data
            return head.startswith(b"HTTP/1.1 200") and body[:65536] == pattern(1 << 20)[:65536]
    sock = open_stream(agent_port, front, f"127.0.0.1:{echo.port}", 20)
    with sock:
        if front == "connect":
            if not read_head(sock).startswith(b"HTTP/1.1 200"):
                return False
        elif sock.recv(10)[:2] != b"\x05\x00":
            return False
        payload = os.urandom(rng.randrange(1, 256 << 10))
        writer = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)), daemon=True)
        writer.start()  # sending and reading at once: traffic both ways
        got = hashlib.sha256()
        total = 0
        while True:
            data = sock.recv(65536)
            if not data:
                break
            got.update(data)
            total += len(data)
        writer.join(5)
        return total == len(payload) and got.digest() == hashlib.sha256(payload).digest()


def run(rtt_ms: float, loss: float, seconds: float, streams: int, resetters: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="fluidity-resets-"))
    certs = make_certs(work / "certs")
    echo, origin = EchoServer(), Origin("origin")
    server_port, hop_port = free_port(), free_port()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)  # a new namespace's loopback starts down
    if loss:
        lossy([hop_port], loss)
    server = start_twistd("server", server_config(certs, port=server_port, log_level="info"), work)
    relay = subprocess.Popen([sys.executable, str(RELAY), str(hop_port), str(server_port), str(rtt_ms)])
    wait_for_port(hop_port, process=relay)
    agent = start_twistd("agent", agent_config(certs, hop_port, log_level="info"), work)
    counts = {"intact": 0, "failed": 0, "resets": 0}
    failures: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    try:
        wait_connected(agent, 30)
        packets_before = packet_counts() if loss else (0, 0)

        def carry(n: int) -> None:
            rng = random.Random(n)
            while time.monotonic() < deadline:
                front = FRONTS[rng.randrange(len(FRONTS))]
                try:
                    ok = exchange(agent.port, front, echo, origin, rng)
                    why = "" if ok else f"{front}: not intact"
                except OSError as e:
                    ok, why = False, f"{front}: {type(e).__name__}: {e}"
                with lock:
                    counts["intact" if ok else "failed"] += 1
                    if why and len(failures) < 20:
                        failures.append(why)

        def cancel(n: int) -> None:
            rng = random.Random(1000 + n)
            while time.monotonic() < deadline:
                front = FRONTS[rng.randrange(len(FRONTS))]
                target = origin.port if front == "absolute-form" else echo.port
                try:
                    sock = open_stream(agent.port, front, f"127.0.0.1:{target}", 10)
                except OSError:
                    continue
                time.sleep(rng.uniform(0, rtt_ms / 1000))  # within the round trip: before the 200 is back
                reset(sock)
                with lock:
                    counts["resets"] += 1
                time.sleep(rng.uniform(0.05, 0.25))  # a busy browser, not a flood (the server allows 200 a second)

        workers = [threading.Thread(target=carry, args=(n,), daemon=True) for n in range(streams)]
        workers += [threading.Thread(target=cancel, args=(n,), daemon=True) for n in range(resetters)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(max(0.1, deadline - time.monotonic() + 60))
        packets = packet_counts() if loss else (0, 0)
        log = agent.log()
    finally:
        agent.stop()
        relay.terminate()
        relay.wait(10)
        server.stop()
        echo.close()
        origin.close()
    return {
        "rtt_ms": rtt_ms,
        "loss_percent": loss,
        "seconds": seconds,
        "teardowns": log.count(" is up") - 1,  # "tunnel to ... is up": once, unless the connection was lost
        "protocol_errors": log.count("protocol error"),
        **counts,
        "failures": failures,
        "packets": packets[0] - packets_before[0],
        "dropped": packets[1] - packets_before[1],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-ms", type=float, default=40.0, help="the hop's round trip")
    parser.add_argument("--loss", type=float, default=1.0, help="percent of the hop's packets dropped each way")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--streams", type=int, default=40, help="workers carrying whole exchanges")
    parser.add_argument("--resetters", type=int, default=20, help="workers whose clients cancel")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not in_own_namespace():
        return reexec_in_namespace()
    result = run(args.rtt_ms, args.loss, args.seconds, args.streams, args.resetters)
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{args.rtt_ms:g} ms round trip, {args.loss:g}% loss each way ({result['dropped']} of {result['packets']} "
        f"packets dropped), {args.seconds:g} s"
    )
    print(f"  tunnel connection torn down {result['teardowns']} times ({result['protocol_errors']} protocol errors)")
    print(f"  {result['resets']} streams reset by their clients within a round trip")
    print(f"  {result['intact']} exchanges intact, {result['failed']} failed")
    for why in result["failures"]:
        print(f"    {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
