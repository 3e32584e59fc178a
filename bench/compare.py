"""Fluidity against the tools a user would pick instead, all on 127.0.0.1, in one run.

    bench/run [--quick]            (installs what is missing, then runs this)

Paths to one HTTPS origin (nginx with its own CA): direct; Fluidity (agent + server);
an stunnel mTLS pair (TLS 1.3, client certificates verified) in front of tinyproxy;
`ssh -D` (a SOCKS5 proxy over one SSH connection to an sshd of our own); and
shadowsocks-libev (ss-local + ss-server, aes-256-gcm). Every scenario runs on every path in
the same run, alternating, for several rounds; medians are reported with each path's ratio
to the stunnel chain and, for bulk transfers, to the best of the three peers, printed and
written to bench/results.md. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tunnel.wire import pki  # noqa: E402

VENV_BIN = Path(sys.executable).parent
TICK = os.sysconf("SC_CLK_TCK")
PATHS = ("direct", "fluidity", "stunnel", "ssh -D", "shadowsocks")
PEERS = ("ssh -D", "shadowsocks", "stunnel")  # the tools a user would pick instead
BARE = "bare relay"  # reference for new connections only: see bench/bare_relay.py
# Fluidity with FLUIDITY_LIBRARY_SPEEDUPS=off (Twisted, h2, hyperframe as shipped): the
# baseline its own speed-ups are measured against, in the same run.
SHIPPED = "fluidity, libraries as shipped"
SOCKS = "fluidity socks5"  # the agent's SOCKS5 front, for round trips
PROXY_PORTS = {"fluidity": "agent", "stunnel": "stunnel_client", BARE: "bare_connect", SHIPPED: "shipped_agent"}
# The processes whose CPU time a path costs (stunnel and tinyproxy use threads, which
# /proc/PID/stat counts). sshd forks a process or two per session (sshd-session, its
# privilege-separated child): "sshd" is the listener with all its descendants (TREES).
CPU_OF = {
    "fluidity": ("fluidity agent", "fluidity server"),
    SHIPPED: ("shipped agent", "shipped server"),
    "stunnel": ("stunnel client", "stunnel server", "tinyproxy"),
    "ssh -D": ("ssh -D", "sshd"),
    "shadowsocks": ("ss-local", "ss-server"),
    BARE: ("bare connect", "bare forward"),
}
TREES = {"sshd"}
SS_PASSWORD = "fluidity-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, process: subprocess.Popen, what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bench: {what} exited with {process.returncode} (see its log)")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"bench: {what} is not listening on {port}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and every descendant, with the children each has reaped
    (cutime + cstime), so a session that ends mid-measurement is still counted."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = sum(int(f) for f in fields[11:15]) / TICK
    tree, grown = {pid}, True
    while grown:
        more = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= more
        grown = bool(more)
    return sum(times.get(p, 0.0) for p in tree)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Rig:
    work: Path
    quick: bool
    procs: list[subprocess.Popen] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], port: int | None = None, **kwargs) -> subprocess.Popen:
        log = open(self.work / f"{name.replace(' ', '_')}.log", "wb")  # noqa: SIM115 (the process's, for its life)
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **kwargs)
        self.procs.append(process)
        self.pids[name] = process.pid
        if port:
            wait_port(port, process, name)
        return process

    def stop(self) -> None:
        for process in reversed(self.procs):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.procs:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()

    # -- the pieces ------------------------------------------------------------------
    def setup(self, size_mb: int) -> None:
        w = self.work
        pki.init(w / "certs")
        pki.init(w / "origin")  # the origin's own CA; its server certificate carries 127.0.0.1
        www = w / "www"
        www.mkdir()
        (www / "1k").write_bytes(os.urandom(1024))
        with open(www / "big", "wb") as f:
            f.truncate(size_mb << 20)  # sparse: served from the page cache, no disk in the way
        self.size = size_mb << 20
        for name in (
            "origin",
            "server",
            "agent",
            "stunnel_server",
            "stunnel_client",
            "tinyproxy",
            "sshd",
            "socks",
            "bare_connect",
            "bare_forward",
            "shipped_server",
            "shipped_agent",
            "ss_server",
            "ss_local",
        ):
            self.ports[name] = free_port()
        self._nginx()
        self._fluidity()
        self._stunnel()
        self._ssh()
        self._shadowsocks()
        self._bare_relay()

    def _nginx(self) -> None:
        w, port = self.work, self.ports["origin"]
        (w / "nginx.conf").write_text(
            f"""daemon off;
worker_processes 2;
pid {w}/nginx.pid;
error_log {w}/nginx-error.log;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  sendfile on;
  keepalive_requests 100000;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {w}/origin/server.pem;
    ssl_certificate_key {w}/origin/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    root {w}/www;
    location = /upload {{ client_max_body_size 0; return 204; }}
  }}
}}
"""
        )
        self.start("nginx", ["nginx", "-c", str(w / "nginx.conf")], port)

    def _fluidity(self) -> None:
        self.fluidity_pair("fluidity", "server", "agent")
        self.fluidity_pair("shipped", "shipped_server", "shipped_agent", FLUIDITY_LIBRARY_SPEEDUPS="off")

    def fluidity_pair(self, name: str, server_port: str, agent_port: str, **env: str) -> None:
        w, certs = self.work, self.work / "certs"
        server = w / f"{name}-server.yaml"
        server.write_text(
            f"host: 127.0.0.1\nport: {self.ports[server_port]}\ncert_file: {certs}/server.pem\nkey_file: "
            f"{certs}/server.key\n"
            f"ca_file: {certs}/ca.pem\negress_allow: ['127.0.0.0/8']\nlog_level: warn\nmax_streams: 5000\n"
        )
        environment = {**os.environ, **env}
        self.start(
            f"{name} server",
            [str(VENV_BIN / "twistd"), "-n", "--pidfile=", "fluidity-server", "--config", str(server)],
            self.ports[server_port],
            cwd=w,
            env=environment,
        )
        agent = self.agent_config(self.ports[agent_port], self.ports[server_port], f"{name}-agent")
        self.start(
            f"{name} agent",
            [str(VENV_BIN / "twistd"), "-n", "--pidfile=", "fluidity-agent", "--config", str(agent)],
            self.ports[agent_port],
            cwd=w,
            env=environment,
        )

    def agent_config(self, proxy_port: int, server_port: int, name: str) -> Path:
        certs = self.work / "certs"
        path = self.work / f"{name}.yaml"
        path.write_text(
            f"proxy_port: {proxy_port}\nserver_ip: 127.0.0.1\nserver_port: {server_port}\ncert_file: "
            f"{certs}/client.pem\n"
            f"key_file: {certs}/client.key\nca_file: {certs}/ca.pem\nlog_level: warn\n"
        )
        return path

    def _bare_relay(self) -> None:
        """The ceiling for two Twisted processes: a CONNECT hop and a port forward, relaying only."""
        script = str(ROOT / "bench" / "bare_relay.py")
        self.start(
            "bare forward",
            [sys.executable, script, "forward", str(self.ports["bare_forward"]), str(self.ports["origin"])],
            self.ports["bare_forward"],
        )
        self.start(
            "bare connect",
            [sys.executable, script, "connect", str(self.ports["bare_connect"]), str(self.ports["bare_forward"])],
            self.ports["bare_connect"],
        )

    def _stunnel(self) -> None:
        w, certs, p = self.work, self.work / "certs", self.ports
        (w / "tinyproxy.conf").write_text(
            f"Port {p['tinyproxy']}\nListen 127.0.0.1\nTimeout 120\nMaxClients 2000\nAllow 127.0.0.1\nLogLevel "
            f"Critical\n"
        )
        self.start("tinyproxy", ["tinyproxy", "-d", "-c", str(w / "tinyproxy.conf")], p["tinyproxy"])
        (w / "stunnel-server.conf").write_text(
            self.stunnel_common()
            + f"[fluidity]\naccept = 127.0.0.1:{p['stunnel_server']}\nconnect = 127.0.0.1:{p['tinyproxy']}\ncert = "
            f"{certs}/server.pem\nkey = {certs}/server.key\nrequireCert = yes\n"
        )
        self.start("stunnel server", ["stunnel4", str(w / "stunnel-server.conf")], p["stunnel_server"])
        self.stunnel_client("stunnel client", p["stunnel_client"], p["stunnel_server"])

    def stunnel_common(self) -> str:
        """Global stunnel settings for both ends: foreground, TLS 1.3 only, peers checked against our CA."""
        return (
            f"foreground = yes\npid =\nsslVersionMin = TLSv1.3\nCAfile = {self.work / 'certs'}/ca.pem\nverifyChain = "
            f"yes\n"
        )

    def stunnel_client(self, name: str, accept: int, connect: int) -> None:
        certs = self.work / "certs"
        path = self.work / f"{name.replace(' ', '-')}.conf"
        path.write_text(
            self.stunnel_common()
            + f"[fluidity]\nclient = yes\naccept = 127.0.0.1:{accept}\nconnect = 127.0.0.1:{connect}\ncert = "
            f"{certs}/client.pem\n"
            f"key = {certs}/client.key\ncheckHost = fluidity-server\n"
        )
        self.start(name, ["stunnel4", str(path)], accept)

    def _ssh(self) -> None:
        w, p = self.work, self.ports
        ssh = w / "ssh"
        ssh.mkdir(mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / "host")], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / "user")], check=True)
        shutil.copy(ssh / "user.pub", ssh / "authorized_keys")
        Path("/run/sshd").mkdir(exist_ok=True)
        (ssh / "sshd_config").write_text(
            f"Port {p['sshd']}\nListenAddress 127.0.0.1\nHostKey {ssh}/host\nAuthorizedKeysFile {ssh}/authorized_keys\n"
            f"PidFile {ssh}/sshd.pid\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
            f"PasswordAuthentication no\n"
            "AllowTcpForwarding yes\nMaxStartups 1000\n"
        )
        self.start("sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", str(ssh / "sshd_config")], p["sshd"])
        self.ssh_socks("ssh -D", p["socks"], p["sshd"])

    def ssh_socks(self, name: str, socks_port: int, sshd_port: int) -> None:
        ssh = self.work / "ssh"
        argv = [
            "ssh",
            "-N",
            "-D",
            f"127.0.0.1:{socks_port}",
            "-p",
            str(sshd_port),
            "-i",
            str(ssh / "user"),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            f"UserKnownHostsFile={ssh}/known_hosts",
            "-o",
            "BatchMode=yes",
            "-o",
            "ExitOnForwardFailure=yes",
            f"{os.environ.get('USER', 'root')}@127.0.0.1",
        ]
        self.start(name, argv, socks_port)

    def _shadowsocks(self) -> None:
        p = self.ports
        self.start(
            "ss-server",
            [
                "ss-server",
                "-s",
                "127.0.0.1",
                "-p",
                str(p["ss_server"]),
                "-k",
                SS_PASSWORD,
                "-m",
                "aes-256-gcm",
                "-n",
                "65536",
            ],
            p["ss_server"],
        )
        self.ss_local("ss-local", p["ss_local"], p["ss_server"])

    def ss_local(self, name: str, local_port: int, server_port: int) -> None:
        argv = [
            "ss-local",
            "-s",
            "127.0.0.1",
            "-p",
            str(server_port),
            "-b",
            "127.0.0.1",
            "-l",
            str(local_port),
            "-k",
            SS_PASSWORD,
            "-m",
            "aes-256-gcm",
            "-n",
            "65536",
        ]
        self.start(name, argv, local_port)

    # -- what each path looks like to a client ----------------------------------------
    def curl_proxy(self, path: str, ports: dict[str, int] | None = None) -> list[str]:
        ports = ports or self.ports
        if path == "direct":
            return []
        if path == "ssh -D":
            return ["--socks5-hostname", f"127.0.0.1:{ports['socks']}"]
        if path == SOCKS:
            return ["--socks5-hostname", f"127.0.0.1:{ports['agent']}"]
        if path == "shadowsocks":
            return ["--socks5-hostname", f"127.0.0.1:{ports['ss_local']}"]
        return ["-x", f"http://127.0.0.1:{ports[PROXY_PORTS[path]]}"]

    def hey_proxy(self, path: str) -> list[str]:
        if path == "ssh -D":
            return ["-x", f"socks5://127.0.0.1:{self.ports['socks']}"]  # Go's HTTP client speaks SOCKS5 too
        if path == "shadowsocks":
            return ["-x", f"socks5://127.0.0.1:{self.ports['ss_local']}"]
        return self.curl_proxy(path)  # hey takes -x http://host:port as curl does

    def url(self, name: str) -> str:
        return f"https://127.0.0.1:{self.ports['origin']}/{name}"

    def curl(self, path: str, *args: str, timeout: float = 600, ports=None) -> str:
        argv = ["curl", "-fsS", "--cacert", str(self.work / "origin" / "ca.pem"), *self.curl_proxy(path, ports), *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"curl via {path} failed: {done.stderr.strip()}")
        return done.stdout


# -- scenarios ---------------------------------------------------------------------------------
def cpu_of(rig: Rig, path: str) -> dict[str, float]:
    """CPU seconds so far of each process that carries `path` (threads included)."""
    return {name: (tree_cpu_seconds if name in TREES else cpu_seconds)(rig.pids[name]) for name in CPU_OF.get(path, ())}


def bulk(rig: Rig, rounds: int) -> dict:
    """1 GiB down and up with curl: MB/s medians, and CPU seconds per GB of each process
    on every path but direct (Fluidity, the stunnel chain, ssh -D, shadowsocks-libev, the
    bare relay), every path in the same round."""
    speeds = {(d, p): [] for d in ("down", "up") for p in (*PATHS, SHIPPED, BARE)}
    cpu: dict = {d: {p: {name: [] for name in CPU_OF[p]} for p in CPU_OF} for d in ("down", "up")}
    gb = rig.size / 1e9
    for _ in range(rounds):
        for path in (*PATHS, SHIPPED, BARE):
            for direction in ("down", "up"):
                before = cpu_of(rig, path)
                if direction == "down":
                    out = rig.curl(path, "-o", "/dev/null", "-w", "%{speed_download}", rig.url("big"))
                else:
                    out = rig.curl(
                        path,
                        "-o",
                        "/dev/null",
                        "-T",
                        str(rig.work / "www" / "big"),
                        "-w",
                        "%{speed_upload}",
                        rig.url("upload"),
                    )
                speeds[(direction, path)].append(float(out) / 1e6)
                for name, seconds in cpu_of(rig, path).items():
                    cpu[direction][path][name].append((seconds - before[name]) / gb)
    return {
        "speeds": {key: statistics.median(v) for key, v in speeds.items()},
        "cpu": {
            d: {p: {name: statistics.median(v) for name, v in by_name.items()} for p, by_name in by_path.items()}
            for d, by_path in cpu.items()
        },
        "aes_gcm": aes_gcm_cpu_seconds_per_gb(),
    }


def aes_gcm_cpu_seconds_per_gb(megabytes: int = 256) -> float:
    """One AES-256-GCM pass over 16 KiB records (TLS 1.3's largest), in this process:
    the cipher's share of the floor."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    cipher, nonce, record = AESGCM(os.urandom(32)), os.urandom(12), os.urandom(16384)
    count = (megabytes << 20) // len(record)
    start = time.process_time()
    for _ in range(count):
        cipher.encrypt(nonce, record, None)
    return (time.process_time() - start) / (count * len(record) / 1e9)


def hey(rig: Rig, path: str, *args: str) -> dict:
    done = subprocess.run(
        ["hey", *args, "-disable-keepalive", *rig.hey_proxy(path), rig.url("1k")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    text = done.stdout
    if done.returncode != 0 or "Requests/sec" not in text:
        raise RuntimeError(f"hey via {path} failed: {done.stderr.strip() or text[-500:]}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    p99 = re.search(r"99%+ in ([\d.]+) secs", text)
    ok = sum(int(n) for n in re.findall(r"\[200\]\s+(\d+) responses", text))
    errors = re.search(r"Error distribution:(.*)", text, re.S)
    error_count = sum(int(n) for n in re.findall(r"\[(\d+)\]", errors.group(1))) if errors else 0
    if errors:  # kept beside the logs: which error, and from where
        with open(rig.work / "hey-errors.log", "a") as log:
            log.write(f"hey {' '.join(args)} via {path}:{errors.group(1)}\n")
    return {"rps": rps, "p99": float(p99.group(1)) if p99 else float("nan"), "ok": ok, "errors": error_count}


def new_connections(rig: Rig, rounds: int, seconds: int) -> dict:
    """Requests per second, one new connection each (hey -c 1), and the CPU milliseconds
    each new connection costs the path's processes."""
    results = {p: [] for p in (*PATHS, SHIPPED, BARE)}
    cpu_ms = {p: [] for p in CPU_OF}
    for _ in range(rounds):
        for path in results:
            before = cpu_of(rig, path)
            run = hey(rig, path, "-z", f"{seconds}s", "-c", "1")
            results[path].append(run["rps"])
            if path in CPU_OF and run["ok"]:
                spent = sum(cpu_of(rig, path).values()) - sum(before.values())
                cpu_ms[path].append(spent * 1000 / run["ok"])
    return {
        "rps": {p: statistics.median(v) for p, v in results.items()},
        "cpu_ms": {p: statistics.median(v) for p, v in cpu_ms.items() if v},
    }


def concurrency(rig: Rig, rounds: int, requests: int) -> dict:
    results = {p: [] for p in PATHS}
    for _ in range(rounds):
        for path in PATHS:
            results[path].append(hey(rig, path, "-n", str(requests), "-c", "500"))
    return {
        p: {
            "p99": statistics.median(r["p99"] for r in v),
            "errors": sum(r["errors"] for r in v) + sum(requests - r["ok"] for r in v),
            "rps": statistics.median(r["rps"] for r in v),
        }
        for p, v in results.items()
    }


def round_trips(rig: Rig, rtt_ms: float, samples: int) -> dict:
    """Time to first byte of the 1 KiB file on a new client connection over an established
    tunnel, with a delaying relay on each path's long hop; in round trips."""
    ports = dict(rig.ports)

    def relay(target):
        return (
            lambda port: (
                rig.start(
                    f"relay-{port}",
                    [sys.executable, str(ROOT / "bench" / "delay_relay.py"), str(port), str(target), str(rtt_ms)],
                    port,
                ),
                port,
            )[1]
        )(free_port())

    ports["agent"] = free_port()
    rig.agent_config(ports["agent"], relay(rig.ports["server"]), "agent-far")
    rig.start(
        "fluidity agent far",
        [str(VENV_BIN / "twistd"), "-n", "--pidfile=", "fluidity-agent", "--config", str(rig.work / "agent-far.yaml")],
        ports["agent"],
        cwd=rig.work,
    )
    ports["stunnel_client"] = free_port()
    rig.stunnel_client("stunnel client far", ports["stunnel_client"], relay(rig.ports["stunnel_server"]))
    ports["socks"] = free_port()
    rig.ssh_socks("ssh -D far", ports["socks"], relay(rig.ports["sshd"]))
    ports["ss_local"] = free_port()
    rig.ss_local("ss-local far", ports["ss_local"], relay(rig.ports["ss_server"]))
    time.sleep(3 * rtt_ms / 1000)
    results = {p: [] for p in (*PATHS, SOCKS)}
    for path in results:
        for _ in range(2):
            rig.curl(path, "-o", "/dev/null", rig.url("1k"), ports=ports)  # the tunnel is up and knows the origin
    for _ in range(samples):
        for path in results:
            out = rig.curl(path, "-o", "/dev/null", "-w", "%{time_starttransfer}", rig.url("1k"), ports=ports)
            results[path].append(float(out) / (rtt_ms / 1000))
    return {p: statistics.median(v) for p, v in results.items()}


def memory(rig: Rig, streams: int, slow_seconds: int) -> dict:
    server, agent = rig.pids["fluidity server"], rig.pids["fluidity agent"]
    base = rss_kb(server)
    held = []
    for _ in range(streams):
        s = socket.create_connection(("127.0.0.1", rig.ports["agent"]), timeout=10)
        s.sendall(f"CONNECT 127.0.0.1:{rig.ports['origin']} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        held.append(s)
    for s in held:
        assert s.recv(64).startswith(b"HTTP/1.1 200")
    time.sleep(1)
    idle_rss = rss_kb(server)
    for s in held:
        s.close()
    time.sleep(1)
    before = {"agent": rss_kb(agent), "server": rss_kb(server)}
    peak = dict(before)
    argv = [
        "curl",
        "-sS",
        "--cacert",
        str(rig.work / "origin" / "ca.pem"),
        *rig.curl_proxy("fluidity"),
        "--limit-rate",
        "1M",
        "-m",
        str(slow_seconds),
        "-o",
        "/dev/null",
        rig.url("big"),
    ]
    slow = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    while slow.poll() is None:
        peak = {"agent": max(peak["agent"], rss_kb(agent)), "server": max(peak["server"], rss_kb(server))}
        time.sleep(0.25)
    return {
        "server_rss_idle_streams_mb": idle_rss / 1024,
        "server_rss_base_mb": base / 1024,
        "slow_reader_growth_mb": {k: (peak[k] - before[k]) / 1024 for k in peak},
    }


# -- report -------------------------------------------------------------------------------------
def cpu_table(b: dict) -> list[str]:
    """The headline: CPU seconds per GB of every process on each path, both directions, with
    MB/s beside; the floor is one plain Twisted relay pass plus one AES-GCM pass per side."""
    lines = [
        "| direction | Fluidity agent | Fluidity server | **Fluidity** | libraries as shipped | stunnel client "
        "| stunnel server + tinyproxy | **stunnel chain** | Fluidity / chain | target | floor (2 sides) "
        "| Fluidity / floor | MB/s Fluidity | MB/s as shipped | MB/s stunnel | MB/s ratio | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for direction, label in (("down", "download"), ("up", "upload")):
        cpu = b["cpu"][direction]
        ours, chain, bare = cpu["fluidity"], cpu["stunnel"], cpu[BARE]
        fluidity, stunnel, shipped = sum(ours.values()), sum(chain.values()), sum(cpu[SHIPPED].values())
        floor = 2 * (statistics.mean(bare.values()) + b["aes_gcm"])
        mb_ours, mb_chain = b["speeds"][(direction, "fluidity")], b["speeds"][(direction, "stunnel")]
        mb_shipped = b["speeds"][(direction, SHIPPED)]
        far_side = chain["stunnel server"] + chain["tinyproxy"]
        cells = [
            label,
            f"{ours['fluidity agent']:.2f}",
            f"{ours['fluidity server']:.2f}",
            f"**{fluidity:.2f}**",
            f"{shipped:.2f} ({fluidity / shipped - 1:+.0%})",
            f"{chain['stunnel client']:.2f}",
            f"{far_side:.2f}",
            f"**{stunnel:.2f}**",
            f"{fluidity / stunnel:.2f}×",
            f"≤ 1.2× {'yes' if fluidity / stunnel <= 1.2 else 'NO'}",
            f"{floor:.2f}",
            f"{fluidity / floor:.2f}×",
            f"{mb_ours:.0f}",
            f"{mb_shipped:.0f}",
            f"{mb_chain:.0f}",
            f"{mb_ours / mb_chain:.2f}×",
            f"≥ 0.8× {'yes' if mb_ours / mb_chain >= 0.8 else 'NO'}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    bare = {d: statistics.mean(b["cpu"][d][BARE].values()) for d in ("down", "up")}
    lines += [
        "",
        f"CPU seconds per GB, in CPU time of each process (utime + stime, threads included) over the bytes of the "
        f"file. Floor: the bare Twisted relay (bench/bare_relay.py, no TLS, no HTTP/2) spent {bare['down']:.2f} "
        f"(download) and {bare['up']:.2f} (upload) per process; one AES-256-GCM pass over 16 KiB records costs "
        f'{b["aes_gcm"]:.2f} here; a side of the tunnel needs at least both. "Libraries as shipped": the same '
        f"Fluidity with FLUIDITY_LIBRARY_SPEEDUPS=off (no eager writes, no TLS record batching, hyperframe's own "
        f"repr), in the same run.",
    ]
    return lines


PEER_NAMES = {"ssh -D": "ssh -D", "shadowsocks": "shadowsocks-libev", "stunnel": "stunnel chain"}


def peers_table(b: dict) -> list[str]:
    """Fluidity against each tool a user would pick instead: CPU seconds per GB of every
    process of each path (client side and server side), MB/s beside, and the ratios to the
    best peer (the least CPU per GB, the most MB/s)."""
    cpu_heads = " | ".join(f"{PEER_NAMES[p]}" for p in PEERS)
    mb_heads = " | ".join(f"MB/s {PEER_NAMES[p]}" for p in PEERS)
    lines = [
        f"| direction | Fluidity | {cpu_heads} | best peer | Fluidity / best | target "
        f"| MB/s Fluidity | {mb_heads} | Fluidity / best MB/s | target |",
        "|---|" + "---|" * (2 * len(PEERS) + 8),
    ]
    for direction, label in (("down", "download"), ("up", "upload")):
        cpu = {p: sum(b["cpu"][direction][p].values()) for p in ("fluidity", *PEERS)}
        mb = {p: b["speeds"][(direction, p)] for p in ("fluidity", *PEERS)}
        best = min(PEERS, key=lambda p: cpu[p])
        fastest = max(PEERS, key=lambda p: mb[p])
        cpu_ratio, mb_ratio = cpu["fluidity"] / cpu[best], mb["fluidity"] / mb[fastest]
        cells = [
            label,
            f"**{cpu['fluidity']:.2f}**",
            *(f"{cpu[p]:.2f}" for p in PEERS),
            PEER_NAMES[best],
            f"{cpu_ratio:.2f}×",
            f"≤ 0.85× {'yes' if cpu_ratio <= 0.85 else 'NO'}",
            f"**{mb['fluidity']:.0f}**",
            *(f"{mb[p]:.0f}" for p in PEERS),
            f"{mb_ratio:.2f}× ({PEER_NAMES[fastest]})",
            f"≥ 1× {'yes' if mb_ratio >= 1 else 'NO'}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    parts = {
        d: ", ".join(f"{PEER_NAMES[p]} {' + '.join(f'{v:.2f}' for v in b['cpu'][d][p].values())}" for p in PEERS[:2])
        for d in ("down", "up")
    }
    lines += [
        "",
        f"Every process of each path, client side and server side: ssh -D is ssh + sshd with its session "
        f"processes (download {parts['down']}; upload {parts['up']}), shadowsocks-libev is ss-local + ss-server "
        f"(aes-256-gcm), the stunnel chain is stunnel client + stunnel server + tinyproxy. ssh uses OpenSSH's "
        f"default cipher.",
    ]
    return lines


def report(results: dict, args) -> str:
    b, nc, cc, rt, mem = (results.get(k) for k in ("bulk", "new", "concurrency", "rtt", "memory"))
    lines = [
        f"# Fluidity benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, loopback; rounds: "
        f"{args.rounds}, file {args.size_mb} MiB)",
        "",
    ]
    if b:
        lines += ["## CPU per GB", "", *cpu_table(b), "", "## Against ssh -D and shadowsocks-libev", ""]
        lines += [*peers_table(b), "", "## Every scenario", ""]
    lines += [
        "| scenario | direct | Fluidity | stunnel+tinyproxy | ssh -D | shadowsocks-libev | Fluidity / stunnel "
        "| target | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def row(name, values, fmt, target_text, ratio=None, met=None):
        cells = [fmt(values[p]) if p in values else "" for p in PATHS]
        ratio_text = f"{ratio:.2f}×" if ratio is not None else ""
        lines.append(
            f"| {name} | {' | '.join(cells)} | {ratio_text} | {target_text} | "
            f"{'yes' if met else 'NO' if met is not None else ''} |"
        )

    notes = []
    if b:
        for direction, label in (("down", "download MB/s"), ("up", "upload MB/s")):
            values = {p: b["speeds"][(direction, p)] for p in PATHS}
            ratio = values["fluidity"] / values["stunnel"]
            row(label, values, lambda v: f"{v:.0f}", "≥ 0.8×", ratio, ratio >= 0.8)
    if nc:
        rps, ms = nc["rps"], nc["cpu_ms"]
        ratio = rps["fluidity"] / rps["stunnel"]
        row(f"new connections/s (hey -c 1, {args.seconds}s)", rps, lambda v: f"{v:.0f}", "≥ 2×", ratio, ratio >= 2)
        row(
            "CPU ms per new connection (the path's processes together)",
            ms,
            lambda v: f"{v:.2f}",
            "",
            ms["fluidity"] / ms["stunnel"],
        )
        notes.append(
            f"New connections through two bare Twisted relay processes (bench/bare_relay.py: a CONNECT hop and a "
            f"port forward, no TLS, no HTTP/2): {rps[BARE]:.0f}/s = {rps[BARE] / rps['stunnel']:.2f}× stunnel, "
            f"{ms[BARE]:.2f} CPU ms each; Fluidity reaches {rps['fluidity'] / rps[BARE]:.0%} of that ceiling."
        )
    if cc:
        p99 = {p: cc[p]["p99"] * 1000 for p in PATHS}
        errors_ok = cc["fluidity"]["errors"] == 0
        ratio = p99["fluidity"] / p99["stunnel"]
        row(
            f"p99 ms (hey -c 500 -n {args.requests})",
            p99,
            lambda v: f"{v:.0f}",
            "≤ ⅓×, 0 errors",
            ratio,
            ratio <= 1 / 3 and errors_ok,
        )
        row("errors (hey -c 500)", {p: cc[p]["errors"] for p in PATHS}, str, "0", None, errors_ok)
    if rt:
        row(
            f"time to first byte, round trips ({args.rtt_ms:g} ms RTT)",
            rt,
            lambda v: f"{v:.2f}",
            "≤ 2.2",
            None,
            rt["fluidity"] <= 2.2,
        )
        row(
            "the same through the agent's SOCKS5 front (Fluidity column; ssh -D and shadowsocks are SOCKS5 too)",
            {p: rt[SOCKS] if p == "fluidity" else rt[p] for p in PATHS},
            lambda v: f"{v:.2f}",
            "≤ 2.2",
            None,
            rt[SOCKS] <= 2.2,
        )
    if mem:
        notes += [
            f"Server RSS with {args.streams} open idle streams: {mem['server_rss_idle_streams_mb']:.1f} MB (target "
            f"≤ 96; {mem['server_rss_base_mb']:.1f} MB before).",
            f"RSS growth while a client reads at 1 MB/s for {args.slow_seconds}s: agent "
            f"{mem['slow_reader_growth_mb']['agent']:.1f} MB, server {mem['slow_reader_growth_mb']['server']:.1f} MB "
            f"(target ≤ 32 each).",
        ]
    return "\n".join([*lines, "", *notes]) + "\n"


SCENARIOS = {
    "bulk": lambda rig, args: bulk(rig, args.rounds),
    "new": lambda rig, args: new_connections(rig, args.rounds, args.seconds),
    "concurrency": lambda rig, args: concurrency(rig, max(1, args.rounds - 1), args.requests),
    "memory": lambda rig, args: memory(rig, args.streams, args.slow_seconds),
    "rtt": lambda rig, args: round_trips(rig, args.rtt_ms, args.rtt_samples),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and short runs, to check the harness")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rtt-ms", type=float, default=100.0)
    parser.add_argument("--rtt-samples", type=int, default=10)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--slow-seconds", type=int, default=30)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.md"))
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios to run ({', '.join(SCENARIOS)}); a partial run prints, writes nothing",
    )
    parser.add_argument(
        "--round-trips-only",
        action="store_true",
        help="measure only time to first byte in round trips, print it, write nothing",
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.size_mb, args.seconds, args.requests, args.rtt_samples, args.slow_seconds = (
            1,
            128,
            3,
            2000,
            3,
            5,
        )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops every process we started
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    work = Path(tempfile.mkdtemp(prefix="fluidity-compare-"))
    work.chmod(0o755)  # nginx's workers run unprivileged and read www/ from here
    rig = Rig(work, args.quick)
    try:
        rig.setup(args.size_mb)
        for path in (*PATHS, SHIPPED, BARE):  # every path works before anything is measured
            rig.curl(path, "-o", "/dev/null", rig.url("1k"))
        if args.round_trips_only:
            for path, value in round_trips(rig, args.rtt_ms, args.rtt_samples).items():
                print(f"time to first byte, {path}: {value:.2f} round trips ({args.rtt_ms:g} ms RTT)")
            return
        chosen = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = sorted(set(chosen) - set(SCENARIOS))
        if unknown:
            raise SystemExit(f"bench: no scenario {', '.join(unknown)} (there are {', '.join(SCENARIOS)})")
        results = {}
        for name in SCENARIOS:
            if name in chosen:
                print(f"{name} ...", flush=True)
                results[name] = SCENARIOS[name](rig, args)
        text = report(results, args)
        print("\n" + text)
        if set(chosen) == set(SCENARIOS):
            Path(args.out).write_text(text)
            print(f"written to {args.out}; logs in {rig.work}")
    finally:
        rig.stop()


if __name__ == "__main__":
    main()
