"""Throughput and completion on a lossy tunnel hop (not a test; issue 24, item 4).

    .venv/bin/python bench/loss.py [--loss 3] [--streams 40] [--mb 10] [--seconds 120]

Runs inside a network namespace of its own (`unshare -n`, as root: it re-executes itself
there), so nothing leaves the machine: only its loopback exists. nftables drops `--loss`
percent of the packets to and from the server's port (both directions, at random), and
the same share on a second port that carries the baseline: one plain TCP connection
moving `--streams` x `--mb` MB over the same lossy path. Then `--streams` parallel
downloads of `--mb` MB each go through the agent (CONNECT), and it prints how many
finished, the total MB/s, and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import (
    Listener,
    agent_config,
    free_port,
    make_certs,
    pattern,
    read_head_exactly,
    server_config,
    start_twistd,
    wait_connected,
)

BLOCK = pattern(1 << 20)


def in_own_namespace() -> bool:
    return os.environ.get("FLUIDITY_LOSS_NETNS") == "1"


def reexec_in_namespace() -> int:
    """Run this script again inside a new network namespace holding only a loopback."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        raise SystemExit(f"{sys.argv[0]} needs root and unshare(1): it makes a network namespace of its own")
    env = {**os.environ, "FLUIDITY_LOSS_NETNS": "1"}
    return subprocess.call(["unshare", "-n", sys.executable, *sys.argv], env=env)


def cpu_seconds(pid: int | None = None) -> float:
    """utime + stime of a process with its threads (this process when `pid` is None)."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def retransmissions() -> dict[str, int]:
    """This namespace's TCP retransmission counters: segments resent, and the timeouts
    (RTOs) among them: a stall of at least the RTO each, for every stream on that connection."""
    counters: dict[str, int] = {}
    for table in ("/proc/net/netstat", "/proc/net/snmp"):
        lines = Path(table).read_text().splitlines()
        for head, values in zip(lines[::2], lines[1::2], strict=False):
            prefix = head.split(":")[0]
            counters.update({prefix + k: int(v) for k, v in zip(head.split()[1:], values.split()[1:], strict=False)})
    return {"segments": counters.get("TcpRetransSegs", 0), "timeouts": counters.get("TcpExtTCPTimeouts", 0)}


def since(before: dict[str, int]) -> dict[str, int]:
    now = retransmissions()
    return {k: now[k] - before[k] for k in now}


def packet_counts() -> tuple[int, int]:
    """(packets seen on the lossy ports, packets dropped) so far."""
    text = subprocess.run(["nft", "list", "table", "inet", "fluidity_loss"], capture_output=True, text=True).stdout
    seen = dropped = 0
    for line in text.splitlines():
        if "counter packets" not in line:
            continue
        n = int(line.split("counter packets")[1].split()[0])
        if line.strip().endswith("drop"):
            dropped += n
        else:
            seen += n
    return seen, dropped


def rate_limited(ports: list[int], mbit: float) -> None:
    """A link of `mbit` Mbit/s each way for the lossy ports (htb on this namespace's loopback,
    one class a direction); everything else stays at loopback speed."""

    def tc(*args: str) -> None:
        subprocess.run(["tc", *args], check=True)

    tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "30")
    for classid, rate in (("1:10", f"{mbit}mbit"), ("1:20", f"{mbit}mbit"), ("1:30", "100gbit")):
        tc("class", "add", "dev", "lo", "parent", "1:", "classid", classid, "htb", "rate", rate)
    for port in ports:
        for field, classid in (("dport", "1:10"), ("sport", "1:20")):
            match = ("match", "ip", field, str(port), "0xffff", "flowid", classid)
            tc("filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32", *match)


def lossy(ports: list[int], percent: float, hook: str = "input") -> None:
    """Drop `percent` of the packets to and from these ports (this namespace only). On the
    input hook: there a packet is one segment, where output still sees 64 KiB GSO bursts."""
    # A real link's packet size, not loopback's 64 KiB: loss then costs what it costs on a network.
    subprocess.run(["ip", "link", "set", "lo", "mtu", "1500", "up"], check=True)
    if shutil.which("ethtool"):  # one packet per segment, so a drop loses one segment, as on a wire
        subprocess.run(["ethtool", "-K", "lo", "tso", "off", "gso", "off", "gro", "off"], capture_output=True)
    if shutil.which("nft") is None:
        raise SystemExit("bench/loss.py needs nft (Debian's nftables)")
    listed = ", ".join(str(p) for p in ports)
    per_mille = round(percent * 10)
    rules = f"""
table inet fluidity_loss {{
  chain lossy {{
    type filter hook {hook} priority 0; policy accept;
    tcp dport {{ {listed} }} counter
    tcp sport {{ {listed} }} counter
    tcp dport {{ {listed} }} numgen random mod 1000 < {per_mille} counter drop
    tcp sport {{ {listed} }} numgen random mod 1000 < {per_mille} counter drop
  }}
}}
"""
    subprocess.run(["nft", "-f", "-"], input=rules.encode(), check=True)


class Source(Listener):
    """Sends `size` bytes to every connection, then closes it cleanly."""

    def __init__(self, size: int) -> None:
        self.size = size
        super().__init__(self._send)

    def _send(self, conn: socket.socket) -> None:
        with conn:
            try:
                sent = 0
                while sent < self.size:
                    chunk = BLOCK[: min(len(BLOCK), self.size - sent)]
                    conn.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                pass


class Sink(Listener):
    """Reads each connection to its end, then answers with the count and SHA-256 it read."""

    def __init__(self) -> None:
        super().__init__(self._read)

    def _read(self, conn: socket.socket) -> None:
        with conn:
            digest, total = hashlib.sha256(), 0
            try:
                while True:
                    data = conn.recv(1 << 20)
                    if not data:
                        break
                    digest.update(data)
                    total += len(data)
                conn.sendall(f"{total} {digest.hexdigest()}\n".encode())
            except OSError:
                pass


@functools.lru_cache(maxsize=8)
def expected_digest(size: int) -> str:
    expected = hashlib.sha256()
    for start in range(0, size, len(BLOCK)):
        expected.update(BLOCK[: min(len(BLOCK), size - start)])
    return expected.hexdigest()


def send(sock: socket.socket, size: int, deadline: float) -> tuple[int, bool]:
    """Upload `size` bytes, half-close, and read the sink's count: (bytes it got, intact)."""
    try:
        sent = 0
        while sent < size and time.monotonic() < deadline:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            chunk = BLOCK[: min(len(BLOCK), size - sent)]
            sock.sendall(chunk)
            sent += len(chunk)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        answer = b""
        while not answer.endswith(b"\n"):
            data = sock.recv(256)
            if not data:
                break
            answer += data
        count, digest = answer.decode().split()
        return int(count), int(count) == size and digest == expected_digest(size)
    except (OSError, ValueError):
        return 0, False


def receive(sock: socket.socket, size: int, deadline: float) -> tuple[int, bool]:
    """(bytes received, intact and complete) by the deadline."""
    digest, total = hashlib.sha256(), 0
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            n = sock.recv_into(buffer)
            if not n:
                break
            digest.update(view[:n])
            total += n
    except OSError:
        pass
    return total, total == size and digest.hexdigest() == expected_digest(size)


def baseline(port: int, size: int, seconds: float) -> dict:
    """One plain TCP connection through the lossy port: a relay-free path of the same loss."""
    source = Source(size)
    relay = socket.socket()
    relay.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    relay.bind(("127.0.0.1", port))
    relay.listen(1)

    def forward() -> None:  # the lossy hop is port -> this forwarder; the source is local
        conn, _ = relay.accept()
        with conn, socket.create_connection(("127.0.0.1", source.port)) as up:
            while True:
                data = up.recv(1 << 20)
                if not data:
                    return
                conn.sendall(data)

    threading.Thread(target=forward, daemon=True).start()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        total, ok = receive(sock, size, started + seconds)
    elapsed = time.monotonic() - started
    return {"mb": total / 1e6, "seconds": elapsed, "complete": ok, "mb_s": total / 1e6 / elapsed}


def through_tunnel(agent_port: int, target, streams: int, size: int, seconds: float) -> dict:
    """`streams` parallel CONNECTs: downloads from a Source, or uploads to a Sink."""
    upload = isinstance(target, Sink)
    results: list[tuple[int, bool, float]] = []
    lock = threading.Lock()
    started = time.monotonic()
    deadline = started + seconds

    stuck: list[str] = []  # how each stream that did not finish ended, to say where it stopped

    def one() -> None:
        total, ok, phase = 0, False, "connecting"
        try:
            with socket.create_connection(("127.0.0.1", agent_port), timeout=10) as sock:
                sock.sendall(f"CONNECT 127.0.0.1:{target.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                phase = "waiting for the answer"
                head = read_head_exactly(sock)
                status = head.split(b"\r\n", 1)[0].decode(errors="replace")
                phase = f"answered {status!r}"
                if head.startswith(b"HTTP/1.1 200"):
                    total, ok = send(sock, size, deadline) if upload else receive(sock, size, deadline)
        except OSError as e:
            phase += f", then {type(e).__name__}"
        with lock:
            results.append((total, ok, time.monotonic() - started))
            if not ok:
                stuck.append(f"{phase}; {total} bytes counted after {time.monotonic() - started:.1f} s")

    threads = [threading.Thread(target=one, daemon=True) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic() + 5))
    elapsed = max((r[2] for r in results), default=seconds)
    moved = sum(r[0] for r in results)
    return {
        "streams": streams,
        "finished": sum(1 for r in results if r[1]),
        "mb": moved / 1e6,
        "seconds": elapsed,
        "mb_s": moved / 1e6 / elapsed if elapsed else 0.0,
        "fastest_s": min((r[2] for r in results if r[1]), default=None),
        "slowest_s": max((r[2] for r in results if r[1]), default=None),
        "unfinished": stuck,
    }


def run(
    loss: float,
    streams: int,
    mb: float,
    seconds: float,
    hook: str = "input",
    direction: str = "down",
    rate: float | None = None,
) -> dict:
    size = int(mb * (1 << 20))
    work = Path(tempfile.mkdtemp(prefix="fluidity-loss-"))
    certs = make_certs(work / "certs")
    server_port, baseline_port = free_port(), free_port()
    lossy([server_port, baseline_port], loss, hook)
    if rate:
        rate_limited([server_port, baseline_port], rate)
    cpu_before, resent = cpu_seconds(), retransmissions()
    plain = baseline(baseline_port, streams * size, seconds)
    plain["retransmitted"] = since(resent)
    plain["cpu_s"] = {"this benchmark (source, relay, reader)": round(cpu_seconds() - cpu_before, 2)}
    plain["packets"], plain["dropped"] = packet_counts()
    target = Sink() if direction == "up" else Source(size)
    server = start_twistd("server", server_config(certs, port=server_port, log_level="info"), work)
    agent = start_twistd("agent", agent_config(certs, server_port, log_level="info"), work)
    try:
        wait_connected(agent, 30)
        before = packet_counts()
        processes = {"agent": agent.process.pid, "server": server.process.pid, "this benchmark (clients, origin)": None}
        cpu_before, resent = {name: cpu_seconds(pid) for name, pid in processes.items()}, retransmissions()
        tunnel = through_tunnel(agent.port, target, streams, size, seconds)
        tunnel["retransmitted"] = since(resent)
        tunnel["cpu_s"] = {name: round(cpu_seconds(pid) - cpu_before[name], 2) for name, pid in processes.items()}
        after = packet_counts()
        tunnel["packets"], tunnel["dropped"] = after[0] - before[0], after[1] - before[1]
        reconnects = agent.log().count(" is up") - 1  # "tunnel to ... is up": once, unless it reconnected
    finally:
        agent.stop()
        server.stop()
    return {
        "loss_percent": loss,
        "direction": direction,
        "baseline": plain,
        "tunnel": tunnel,
        "ratio": tunnel["mb_s"] / plain["mb_s"] if plain["mb_s"] else None,
        "reconnects": reconnects,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss", type=float, default=3.0, help="percent of packets dropped each way")
    parser.add_argument("--streams", type=int, default=40)
    parser.add_argument("--mb", type=float, default=10.0, help="MB per stream")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument(
        "--hook",
        choices=("input", "output"),
        default="input",
        help="where packets are dropped: input sees one segment a packet, output 64 KiB GSO bursts",
    )
    parser.add_argument(
        "--direction", choices=("down", "up"), default="down", help="downloads (destination to client) or uploads"
    )
    parser.add_argument(
        "--rate", type=float, default=None, help="a link of this many Mbit/s each way (default: loopback speed)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not in_own_namespace():
        return reexec_in_namespace()
    result = run(args.loss, args.streams, args.mb, args.seconds, args.hook, args.direction, args.rate)
    if args.json:
        print(json.dumps(result))
        return 0
    t, b = result["tunnel"], result["baseline"]
    link = f", a {args.rate:g} Mbit/s link" if args.rate else ", loopback speed"
    print(f"{args.loss:g}% loss each way on the tunnel's hop{link}")
    print(
        f"  one plain TCP connection: {b['mb']:.0f} MB in {b['seconds']:.1f} s = {b['mb_s']:.1f} MB/s ({b['dropped']} "
        f"of {b['packets']} packets dropped)"
    )
    print(
        f"  {t['streams']} {'uploads' if args.direction == 'up' else 'downloads'} x {args.mb:g} MB through Fluidity: "
        f"{t['finished']}/{t['streams']} finished, {t['mb']:.0f} MB in {t['seconds']:.1f} s = {t['mb_s']:.1f} MB/s "
        f"({result['ratio']:.2f}x the plain connection; {t['dropped']} of {t['packets']} packets dropped)"
    )
    for name, phase in (("plain", b), ("Fluidity", t)):
        resent = phase["retransmitted"]
        cpu = ", ".join(f"{who} {seconds:.2f}" for who, seconds in phase["cpu_s"].items())
        print(
            f"  {name}: {resent['segments']} segments resent, {resent['timeouts']} retransmission timeouts; "
            f"CPU seconds: {cpu}"
        )
    if t["finished"]:
        print(f"  streams finished between {t['fastest_s']:.1f} s and {t['slowest_s']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
