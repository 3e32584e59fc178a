"""How long a local client waits when a middlebox forgets the tunnel's flow (issue 25, item 7).

    .venv/bin/python bench/forgotten_flow.py [--json]

A firewall or NAT that flushes its table, or a proxy past its idle limit that does not
say so, drops every later packet of the tunnel's TCP connection without a word: nothing
tells the agent, which would only find out when a keepalive PING goes unanswered (up to
keepalive_interval + keepalive_timeout later). Runs in a network namespace of its own
(`unshare -n`, as root), so nothing leaves the machine; nftables plays the middlebox that
forgot the flow, dropping both directions of the one connection the agent holds, while new
connections pass. Then, once each:

* a client asks for a destination the agent has not reached before (it waits for the
  server's answer, so its stream can be opened again on a new connection);
* a client asks for a destination reached before (answered at once, its bytes already
  sent into the dead connection: it can only be told the stream was cut), then asks again.

It prints each wait and what the client got. Keepalives are set long (30 s / 20 s) so the
figures show what the probe does, not the keepalive.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loss import in_own_namespace, reexec_in_namespace
from support import (
    Listener,
    agent_config,
    free_port,
    make_certs,
    read_head,
    server_config,
    start_twistd,
    wait_connected,
)

KEEPALIVE = {"keepalive_interval": "30s", "keepalive_timeout": "20s"}


def http_origin() -> Listener:
    def answer(conn) -> None:
        with conn:
            read_head(conn)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")

    return Listener(answer)


def tunnel_flow(server_port: int) -> int:
    """The agent's side (local port) of its one established connection to the server."""
    lines = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( dport = :{server_port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    ports = [int(line.split()[2].rsplit(":", 1)[1]) for line in lines if line.strip()]
    if len(ports) != 1:
        raise SystemExit(f"expected one tunnel connection, found {len(ports)}")
    return ports[0]


def forget(port: int) -> None:
    """Drop everything to and from this agent port from now on, as a middlebox that lost the flow."""
    rules = f"""
table inet fluidity_forgot
delete table inet fluidity_forgot
table inet fluidity_forgot {{
  chain forgot {{
    type filter hook input priority 0; policy accept;
    tcp sport {port} counter drop
    tcp dport {port} counter drop
  }}
}}
"""
    subprocess.run(["nft", "-f", "-"], input=rules.encode(), check=True)


def fetch(agent_port: int, origin_port: int, timeout: float = 60.0) -> tuple[float, str]:
    """GET through the agent with CONNECT (curl -p); seconds until curl finished, and what it got."""
    started = time.monotonic()
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "-p",
            "--max-time",
            str(int(timeout)),
            "-x",
            f"http://127.0.0.1:{agent_port}",
            f"http://127.0.0.1:{origin_port}/",
        ],
        capture_output=True,
        text=True,
        timeout=timeout + 10,
    )
    took = time.monotonic() - started
    return took, done.stdout if done.returncode == 0 else f"curl exit {done.returncode}: {done.stderr.strip()[:160]}"


def run() -> dict:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    work = Path(tempfile.mkdtemp(prefix="fluidity-forgot-"))
    certs = make_certs(work / "certs")
    server_port = free_port()
    known, fresh = http_origin(), http_origin()
    server = start_twistd("server", server_config(certs, port=server_port, log_level="info", **KEEPALIVE), work)
    agent = start_twistd(
        "agent", agent_config(certs, server_port, log_level="info", tunnel_wait="30s", **KEEPALIVE), work
    )
    result: dict = {}
    try:
        wait_connected(agent, 30)
        took, got = fetch(agent.port, known.port)
        assert got == "ok", got  # the destination is known (answered early from now on)

        time.sleep(1.5)  # quiet: the next stream's PING is the probe
        forget(tunnel_flow(server_port))
        took, got = fetch(agent.port, fresh.port)
        result["new_destination"] = {"seconds": round(took, 2), "got": got}

        wait_connected(agent, 30)
        time.sleep(1.5)
        forget(tunnel_flow(server_port))
        took, got = fetch(agent.port, known.port)
        again, got_again = fetch(agent.port, known.port)
        result["known_destination"] = {
            "seconds": round(took, 2),
            "got": got,
            "again_seconds": round(again, 2),
            "again_got": got_again,
        }
        result["reconnects"] = agent.log().count(" is up") - 1
        result["probe_timeout_s"] = 3.0
    finally:
        agent.stop()
        server.stop()
        known.close()
        fresh.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not in_own_namespace():
        return reexec_in_namespace()
    result = run()
    if args.json:
        print(json.dumps(result))
        return 0
    new, old = result["new_destination"], result["known_destination"]
    print("the tunnel's flow forgotten by a middlebox (both directions dropped silently); keepalive 30 s / 20 s")
    print(f"  a destination not reached before: {new['seconds']:.1f} s, got {new['got']!r}")
    print(
        f"  a destination reached before (told 'connected' at once): {old['seconds']:.1f} s, got {old['got']!r}; asked "
        f"again: {old['again_seconds']:.1f} s, got {old['again_got']!r}"
    )
    print(f"  reconnects: {result['reconnects']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
