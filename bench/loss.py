"""Throughput and completion on a lossy tunnel hop (not a test; issues 24 and 44).

    .venv/bin/python bench/loss.py [--loss 3] [--streams 40] [--mb 10] [--seconds 120]
        [--direction down|up|both] [--rounds 1] [--reader-rate MB/s]

Runs inside a network namespace of its own (`unshare -n`, as root: it re-executes itself
there), so nothing leaves the machine: only its loopback exists. nftables drops `--loss`
percent of the packets to and from the server's port (both directions, at random), and
the same share on a second port that carries the baseline: one plain TCP connection
moving `--streams` x `--mb` MB over the same lossy path. Then `--streams` parallel
downloads of `--mb` MB each go through the agent (CONNECT), or uploads, or with `--direction
both` that many downloads and as many uploads at the same time; `--rounds` repeats that with
a new server and agent each time. It prints how many finished, the total MB/s, the ratio to
the baseline, the longest any stream waited without progress (a byte, or its end), and the
streams that never ended, with where each stopped.
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
    """Sends `size` bytes to every connection, then closes it cleanly. `reader_rate`: how
    fast the clients that download from it take their bytes (MB/s; None: as fast as they can)."""

    def __init__(self, size: int, reader_rate: float | None = None) -> None:
        self.size = size
        self.reader_rate = reader_rate
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
    """Reads each connection to its end, then answers with the count and SHA-256 it read,
    each at most `reader_rate` MB/s (None: as fast as it can)."""

    def __init__(self, reader_rate: float | None = None) -> None:
        self.reader_rate = reader_rate
        super().__init__(self._read)

    def _read(self, conn: socket.socket) -> None:
        with conn:
            digest, total, pace = hashlib.sha256(), 0, Pace(self.reader_rate)
            try:
                while True:
                    data = conn.recv(1 << 20)
                    if not data:
                        break
                    digest.update(data)
                    total += len(data)
                    pace.took(total)
                conn.sendall(f"{total} {digest.hexdigest()}\n".encode())
            except OSError:
                pass


@functools.lru_cache(maxsize=8)
def expected_digest(size: int) -> str:
    expected = hashlib.sha256()
    for start in range(0, size, len(BLOCK)):
        expected.update(BLOCK[: min(len(BLOCK), size - start)])
    return expected.hexdigest()


class Pace:
    """Holds a reader to `rate` MB/s (None: as fast as it can): a slow client or destination."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.started = time.monotonic()

    def took(self, total: int) -> None:
        if self.rate:
            ahead = total / (self.rate * 1e6) - (time.monotonic() - self.started)
            if ahead > 0:
                time.sleep(ahead)


class Progress:
    """When a stream last moved (a byte, an answer, its end), and the longest it went without."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.longest = 0.0

    def moved(self) -> None:
        now = time.monotonic()
        self.longest, self.last = max(self.longest, now - self.last), now

    def waited(self) -> float:
        """The longest wait, counting the one still going on (a stream that never ended)."""
        return max(self.longest, time.monotonic() - self.last)


def send(sock: socket.socket, size: int, deadline: float, progress: Progress) -> tuple[int, bool, str]:
    """Upload `size` bytes, half-close, and read the sink's count: (bytes it got, intact, how it ended)."""
    sent = 0  # until the sink's answer says what arrived
    try:
        while sent < size and time.monotonic() < deadline:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            chunk = memoryview(BLOCK)[: min(len(BLOCK), size - sent)]
            while chunk:
                n = sock.send(chunk)
                chunk = chunk[n:]
                sent += n
                progress.moved()
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        answer = b""
        while not answer.endswith(b"\n"):
            data = sock.recv(256)
            if not data:
                break
            answer += data
        progress.moved()
        count, digest = answer.decode().split()
        return int(count), int(count) == size and digest == expected_digest(size), "answered"
    except TimeoutError:
        return sent, False, "no answer by the deadline"
    except (OSError, ValueError) as e:
        return 0, False, type(e).__name__


def receive(
    sock: socket.socket, size: int, deadline: float, progress: Progress, pace: Pace | None = None
) -> tuple[int, bool, str]:
    """(bytes received, intact and complete, how it ended) by the deadline."""
    digest, total = hashlib.sha256(), 0
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    how = "no end by the deadline"
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            n = sock.recv_into(buffer)
            progress.moved()
            if not n:
                how = "eof"
                break
            digest.update(view[:n])
            total += n
            if pace is not None:
                pace.took(total)
    except TimeoutError:
        pass
    except OSError as e:
        how = type(e).__name__
    return total, total == size and digest.hexdigest() == expected_digest(size), how


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
        total, ok, _ = receive(sock, size, started + seconds, Progress())
    elapsed = time.monotonic() - started
    return {"mb": total / 1e6, "seconds": elapsed, "complete": ok, "mb_s": total / 1e6 / elapsed}


def one_stream(agent_port: int, target: Source | Sink, size: int, started: float, deadline: float) -> dict:
    """One CONNECT through the agent, a download from a Source or an upload to a Sink."""
    upload = isinstance(target, Sink)
    progress = Progress()
    total, ok, how, phase = 0, False, "", "connecting"
    try:
        with socket.socket() as sock:
            sock.settimeout(10)
            sock.connect(("127.0.0.1", agent_port))
            sock.sendall(f"CONNECT 127.0.0.1:{target.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            phase = "waiting for the answer"
            head = read_head_exactly(sock)
            progress.moved()
            status = head.split(b"\r\n", 1)[0].decode(errors="replace")
            phase = f"answered {status!r}"
            if head.startswith(b"HTTP/1.1 200"):
                if upload:
                    total, ok, how = send(sock, size, deadline, progress)
                else:
                    total, ok, how = receive(sock, size, deadline, progress, Pace(target.reader_rate))
    except OSError as e:
        how = type(e).__name__
    now = time.monotonic()
    return {
        "direction": "up" if upload else "down",
        "bytes": total,
        "ok": ok,
        # It never ended: still waiting for its bytes, its end or its answer at the deadline.
        "never_ended": not ok and now >= deadline,
        "seconds": now - started,
        "longest_wait_s": progress.waited(),
        "where": f"{phase}, then {how}; {total} bytes counted after {now - started:.1f} s",
    }


def through_tunnel(agent_port: int, targets: list[Source | Sink], streams: int, size: int, seconds: float) -> dict:
    """`streams` parallel CONNECTs to each target (a Source: downloads; a Sink: uploads), all at once."""
    results: list[dict] = []
    lock = threading.Lock()
    started = time.monotonic()
    deadline = started + seconds

    def one(target: Source | Sink) -> None:
        result = one_stream(agent_port, target, size, started, deadline)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=one, args=(t,), daemon=True) for t in targets for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic() + 5))
    finished = [r for r in results if r["ok"]]
    elapsed = max((r["seconds"] for r in results), default=seconds)
    moved = sum(r["bytes"] for r in results)
    return {
        "streams": len(threads),
        "finished": len(finished),
        "never_ended": sum(1 for r in results if r["never_ended"]) + len(threads) - len(results),
        "mb": moved / 1e6,
        "seconds": elapsed,
        "mb_s": moved / 1e6 / elapsed if elapsed else 0.0,
        "fastest_s": min((r["seconds"] for r in finished), default=None),
        "slowest_s": max((r["seconds"] for r in finished), default=None),
        "longest_wait_s": max((r["longest_wait_s"] for r in results), default=None),
        # where each stream that did not finish stopped, to say where to look
        "unfinished": [f"{r['direction']}: {r['where']}" for r in results if not r["ok"]],
    }


def one_round(
    certs, server_port: int, work: Path, targets: list, streams: int, size: int, seconds: float, n: int = 1
) -> dict:
    """A new server and agent (their logs kept as server-n.log, agent-n.log), the streams
    through them, and what it cost."""
    server = start_twistd("server", server_config(certs, port=server_port, log_level="info"), work, f"server-{n}")
    agent = start_twistd("agent", agent_config(certs, server_port, log_level="info"), work, f"agent-{n}")
    try:
        wait_connected(agent, 30)
        before = packet_counts()
        processes = {"agent": agent.process.pid, "server": server.process.pid, "this benchmark (clients, origin)": None}
        cpu_before, resent = {name: cpu_seconds(pid) for name, pid in processes.items()}, retransmissions()
        tunnel = through_tunnel(agent.port, targets, streams, size, seconds)
        tunnel["retransmitted"] = since(resent)
        tunnel["cpu_s"] = {name: round(cpu_seconds(pid) - cpu_before[name], 2) for name, pid in processes.items()}
        after = packet_counts()
        tunnel["packets"], tunnel["dropped"] = after[0] - before[0], after[1] - before[1]
        tunnel["reconnects"] = agent.log().count(" is up") - 1  # "tunnel to ... is up": once, unless it reconnected
        tunnel["logs"] = str(work)
    finally:
        agent.stop()
        server.stop()
    return tunnel


def run(
    loss: float,
    streams: int,
    mb: float,
    seconds: float,
    hook: str = "input",
    direction: str = "down",
    rate: float | None = None,
    rounds: int = 1,
    reader_rate: float | None = None,
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
    targets: list[Source | Sink] = []
    if direction in ("down", "both"):
        targets.append(Source(size, reader_rate))
    if direction in ("up", "both"):
        targets.append(Sink(reader_rate))
    every = [one_round(certs, server_port, work, targets, streams, size, seconds, n) for n in range(1, rounds + 1)]
    mb_s = sum(t["mb_s"] for t in every) / len(every)
    return {
        "loss_percent": loss,
        "direction": direction,
        "baseline": plain,
        "rounds": every,
        "summary": {
            "rounds": len(every),
            "streams": sum(t["streams"] for t in every),
            "finished": sum(t["finished"] for t in every),
            "never_ended": sum(t["never_ended"] for t in every),
            "never_ended_per_round": [t["never_ended"] for t in every],
            "longest_wait_s": max((t["longest_wait_s"] or 0.0) for t in every),
            "slowest_s": max((t["slowest_s"] or 0.0) for t in every),
            "mb_s": mb_s,
            "reconnects": sum(t["reconnects"] for t in every),
        },
        "ratio": mb_s / plain["mb_s"] if plain["mb_s"] else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss", type=float, default=3.0, help="percent of packets dropped each way")
    parser.add_argument("--streams", type=int, default=40, help="streams each way (--direction both: twice as many)")
    parser.add_argument("--mb", type=float, default=10.0, help="MB per stream")
    parser.add_argument("--seconds", type=float, default=120.0, help="the deadline of each round")
    parser.add_argument(
        "--hook",
        choices=("input", "output"),
        default="input",
        help="where packets are dropped: input sees one segment a packet, output 64 KiB GSO bursts",
    )
    parser.add_argument(
        "--direction",
        choices=("down", "up", "both"),
        default="down",
        help="downloads (destination to client), uploads, or both at the same time",
    )
    parser.add_argument("--rounds", type=int, default=1, help="times to run the streams, a new server and agent each")
    parser.add_argument(
        "--rate", type=float, default=None, help="a link of this many Mbit/s each way (default: loopback speed)"
    )
    parser.add_argument(
        "--reader-rate",
        type=float,
        default=None,
        help="every reader (a downloading client, the uploads' destination) takes at most this many MB/s",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not in_own_namespace():
        return reexec_in_namespace()
    result = run(
        args.loss,
        args.streams,
        args.mb,
        args.seconds,
        args.hook,
        args.direction,
        args.rate,
        args.rounds,
        args.reader_rate,
    )
    if args.json:
        print(json.dumps(result))
        return 0
    report(result, args)
    return 0


def report(result: dict, args: argparse.Namespace) -> None:
    b, summary = result["baseline"], result["summary"]
    link = f", a {args.rate:g} Mbit/s link" if args.rate else ", loopback speed"
    kind = {"down": "downloads", "up": "uploads", "both": "downloads and as many uploads at once"}[args.direction]
    print(f"{args.loss:g}% loss each way on the tunnel's hop{link}")
    print(
        f"  one plain TCP connection: {b['mb']:.0f} MB in {b['seconds']:.1f} s = {b['mb_s']:.1f} MB/s ({b['dropped']} "
        f"of {b['packets']} packets dropped)"
    )
    for n, t in enumerate(result["rounds"], 1):
        print(
            f"  round {n}: {args.streams} {kind} x {args.mb:g} MB through Fluidity: {t['finished']}/{t['streams']} "
            f"finished, {t['never_ended']} never ended, {t['mb']:.0f} MB in {t['seconds']:.1f} s = "
            f"{t['mb_s']:.1f} MB/s; "
            f"longest wait of a stream {t['longest_wait_s']:.1f} s ({t['dropped']} of {t['packets']} packets dropped, "
            f"{t['reconnects']} reconnects)"
        )
        resent = t["retransmitted"]
        cpu = ", ".join(f"{who} {seconds:.2f}" for who, seconds in t["cpu_s"].items())
        print(f"    {resent['segments']} segments resent, {resent['timeouts']} retransmission timeouts; CPU s: {cpu}")
        if t["finished"]:
            print(f"    streams finished between {t['fastest_s']:.1f} s and {t['slowest_s']:.1f} s")
        for where in t["unfinished"]:
            print(f"    unfinished: {where}")
        if t["unfinished"]:
            print(f"    the server's and the agent's logs: {t['logs']}/server-{n}.log, agent-{n}.log")
    print(
        f"  over {summary['rounds']} rounds: {summary['finished']}/{summary['streams']} finished, "
        f"{summary['never_ended']} never ended {summary['never_ended_per_round']}, longest wait of any stream "
        f"{summary['longest_wait_s']:.1f} s, {summary['mb_s']:.1f} MB/s a round ({result['ratio']:.2f}x the plain "
        f"connection)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
