"""What a stranger on the internet can cost the server (not a test; prints figures):

* agent connect time while bare TCP connects flood the TLS port, against the same
  agent's connect time with no flood, in the same run;
* destination sockets still held after uploads to a destination that never reads were
  aborted (and how long the server took to let go of them);
* server CPU per 100,000 connection-level WINDOW_UPDATEs with 0 and with 2,000 open
  streams (sent in bursts that stay under the flood budget, then scaled).

    .venv/bin/python bench/hostile.py [--flood 2000] [--uploads 20] [--streams 2000]

Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import agent_config, make_certs, proxy_connect, server_config, start_twistd, wait_connected, wait_until
from test_h2_abuse import HoldingListener, window_update_cost
from test_linger import ESTABLISHED, Listener, fill, never_read, reset, tcp_state
from test_preauth import Flood


def connect_time(certs, server, work: Path, name: str) -> float:
    started = time.monotonic()
    agent = start_twistd("agent", agent_config(certs, server.port), work, name=name)
    try:
        wait_connected(agent, seconds=30)
        return time.monotonic() - started
    finally:
        agent.stop()


def connect_under_flood(certs, work: Path, flood_size: int, rounds: int) -> None:
    server = start_twistd("server", server_config(certs, log_level="info"), work, name="server-flood")
    try:
        quiet = [connect_time(certs, server, work, f"quiet{i}") for i in range(rounds)]
        flooded = []
        for i in range(rounds):
            with Flood(server.port, "127.0.0.1", count=flood_size, seconds=60, rate=2000) as flood:
                wait_until(lambda: flood.opened >= flood_size // 2, 30)
                flooded.append(connect_time(certs, server, work, f"flooded{i}"))
        q, f = statistics.median(quiet), statistics.median(flooded)
        print(
            f"agent connect time: {q:.2f}s quiet, {f:.2f}s under a flood of {flood_size} bare connects ({f / q:.2f}x)"
        )
    finally:
        server.stop()


def aborted_uploads(certs, work: Path, uploads: int) -> None:
    server = start_twistd("server", server_config(certs, log_level="info"), work, name="server-uploads")
    agent = start_twistd("agent", agent_config(certs, server.port), work, name="agent-uploads")
    sink = Listener(never_read)
    try:
        wait_connected(agent)
        queued = 0
        for _ in range(uploads):
            client, _head = proxy_connect(agent.port, f"127.0.0.1:{sink.port}")
            queued += fill(client)
            reset(client)
        aborted = time.monotonic()
        wait_until(lambda: len(sink.accepted) == uploads, 10)
        try:
            wait_until(lambda: all(tcp_state(c) != ESTABLISHED for c in sink.accepted), 60, 0.2)
        except TimeoutError:
            pass
        held = sum(tcp_state(c) == ESTABLISHED for c in sink.accepted)
        print(
            f"aborted uploads: {uploads} ({queued / 1e6:.0f} MB queued toward a destination that never reads); "
            f"{held} destination socket(s) still held, the rest released within {time.monotonic() - aborted:.1f}s"
        )
    finally:
        agent.stop()
        server.stop()
        sink.close()


def window_updates(certs, work: Path, streams: int, rounds: int) -> None:
    holder = HoldingListener()
    burst = 15000  # under the flood budget (20,000 per 10 s), as an honest-looking peer would
    server = start_twistd("server", server_config(certs, log_level="info", dial_timeout="120s"), work, name="server-wu")
    try:
        idle = statistics.median(window_update_cost(server, certs, 0, holder.port, burst) for _ in range(rounds))
        busy = statistics.median(window_update_cost(server, certs, streams, holder.port, burst) for _ in range(rounds))
        scale = 100_000 / burst
        print(
            f"server CPU per 100k WINDOW_UPDATEs: {idle * scale:.2f}s with no stream, {busy * scale:.2f}s with "
            f"{streams} open ({busy / max(idle, 1e-9):.2f}x)"
        )
    finally:
        server.stop()
        holder.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flood", type=int, default=2000)
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fluidity-hostile-"))
    certs = make_certs(work / "certs")
    connect_under_flood(certs, work, args.flood, args.rounds)
    aborted_uploads(certs, work, args.uploads)
    window_updates(certs, work, args.streams, args.rounds)


if __name__ == "__main__":
    main()
