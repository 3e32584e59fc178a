"""The firewalls Fluidity's users sit behind, as a lab of network namespaces (issue 25, item 8).

    .venv/bin/python bench/firewall_lab.py [--json] [--only TEXT]   (root; tests/test_firewall_lab.py runs it)

Everything runs inside `unshare --net --mount` (nothing can leave the machine: the lab's
namespaces are joined only to each other, by veth pairs, on documentation addresses):

    laptop 192.0.2.10  --  192.0.2.1 router 203.0.113.1  --  internet 203.0.113.7 (server :443, :8443)
    (agent; no working                (squid, mitmproxy,              203.0.113.80 (origin :80)
     resolver)                         nftables)

The router forwards nothing but TCP to ports 80 and 443 ("port filter"), or nothing at all
("proxy only": the way out is its squid, Debian's stock configuration with only an ACL for
the lab's subnet and, where a row says so, an auth block added). mitmproxy on the router
intercepts TLS with its own CA. For each row an agent starts in the laptop, and curl there
fetches http://203.0.113.80/ through it; the row says what the client got and the time to
first byte of that request (curl's time_starttransfer, the tunnel already up where it can be).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from kdc import Kdc  # noqa: E402
from support import TWISTD, make_certs  # noqa: E402

LAPTOP, ROUTER, INTERNET = "fl-laptop", "fl-router", "fl-internet"
SERVER, ORIGIN, ROUTER_IN, ROUTER_OUT = "203.0.113.7", "203.0.113.80", "192.0.2.1", "203.0.113.1"
SERVER_NAME = "fluidity.lab.test"  # resolvable by the router's squid only
PROXY_NAME, REALM = "proxy.corp.lab.test", "CORP.LAB.TEST"  # the laptop's hosts file names its proxy
PLANE, PLANE_NAME, API_KEY = "203.0.113.20", "api.lab.test", "lab-api-key"  # the control plane (API Gateway's part)
SERVER_DNS_NAME = "ip-203-0-113-7.ec2.internal"  # the task's public DNS name, as the control plane reports it
AWS_SIDE, AWS_LINK = "198.51.100.1", "198.51.100.2"  # moto, on a link of its own from the lab's host to the internet
MITMDUMP = os.environ.get("FLUIDITY_MITMDUMP", "/opt/fluidity-mitmproxy/bin/mitmdump")
HELPERS = Path("/usr/lib/squid")
ONLY = ""  # --only: run just the rows whose scenario contains this text


def sh(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=60, **kw)


def in_ns(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *args]


def build(work: Path) -> None:
    """The namespaces, their links and routes; a laptop whose resolver answers nothing."""
    sh("mount", "--make-rprivate", "/")
    Path("/run/netns").mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "tmpfs", "lab-netns", "/run/netns")
    Path("/etc/netns").mkdir(exist_ok=True)
    sh("mount", "-t", "tmpfs", "lab-etc-netns", "/etc/netns")
    (Path("/etc/netns") / LAPTOP).mkdir()
    (Path("/etc/netns") / LAPTOP / "resolv.conf").write_text("nameserver 192.0.2.53\n")  # nothing answers there
    (Path("/etc/netns") / LAPTOP / "hosts").write_text(
        f"127.0.0.1 localhost\n{ROUTER_IN} {PROXY_NAME}\n"
    )  # its proxy, by name (Kerberos needs one)
    (Path("/etc/netns") / ROUTER).mkdir()
    (Path("/etc/netns") / ROUTER / "hosts").write_text(
        f"127.0.0.1 localhost\n{SERVER} {SERVER_NAME} {SERVER_DNS_NAME}\n{PLANE} {PLANE_NAME}\n"
    )  # what the proxy resolves
    for ns in (LAPTOP, ROUTER, INTERNET):
        sh("ip", "netns", "add", ns)
        sh(*in_ns(ns, "ip", "link", "set", "lo", "up"))
    sh("ip", "link", "add", "fl-lap", "netns", LAPTOP, "type", "veth", "peer", "name", "fl-rin", "netns", ROUTER)
    sh("ip", "link", "add", "fl-rout", "netns", ROUTER, "type", "veth", "peer", "name", "fl-net", "netns", INTERNET)
    sh("ip", "link", "set", "lo", "up")  # the lab's host talks to its own moto
    sh("ip", "link", "add", "fl-aws", "type", "veth", "peer", "name", "fl-awsn", "netns", INTERNET)
    sh("ip", "addr", "add", f"{AWS_SIDE}/30", "dev", "fl-aws")
    sh("ip", "link", "set", "fl-aws", "up")
    for ns, dev, addresses in (
        (LAPTOP, "fl-lap", ["192.0.2.10/24"]),
        (ROUTER, "fl-rin", [f"{ROUTER_IN}/24"]),
        (ROUTER, "fl-rout", [f"{ROUTER_OUT}/24"]),
        (INTERNET, "fl-net", [f"{SERVER}/24", f"{ORIGIN}/24", f"{PLANE}/24"]),
        (INTERNET, "fl-awsn", [f"{AWS_LINK}/30"]),
    ):
        for address in addresses:
            sh(*in_ns(ns, "ip", "addr", "add", address, "dev", dev))
        sh(*in_ns(ns, "ip", "link", "set", dev, "up"))
    sh(*in_ns(LAPTOP, "ip", "route", "add", "default", "via", ROUTER_IN))
    sh(*in_ns(INTERNET, "ip", "route", "add", "192.0.2.0/24", "via", ROUTER_OUT))
    sh(*in_ns(ROUTER, "sysctl", "-qw", "net.ipv4.ip_forward=1"))


def firewall(mode: str) -> None:
    """`port-filter`: forward TCP to 80 and 443 only; `proxy-only`: forward nothing."""
    # A stateful filter: a connection is let in by its SYN and lives in the conntrack table;
    # a packet of a flow the table does not hold is dropped (tcp_loose off), as when a
    # firewall restarts or flushes its table.
    allow = (
        'iifname "fl-rin" tcp dport { 80, 443 } tcp flags & (syn | ack) == syn ct state new accept'
        if mode == "port-filter"
        else ""
    )
    rules = f"""
table inet lab
delete table inet lab
table inet lab {{
  chain forward {{
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    {allow}
  }}
}}
"""
    subprocess.run(in_ns(ROUTER, "nft", "-f", "-"), input=rules.encode(), check=True, timeout=30)
    sh(
        *in_ns(ROUTER, "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0")
    )  # there once the ct rule loaded conntrack


class Squid:
    """Debian's stock squid.conf, with an ACL for the lab's subnet (and an auth block) added where it says so."""

    def __init__(self, work: Path, auth: str = "", kdc=None) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="lab-squid-", dir=work))
        os.chmod(self.folder, 0o777)
        stock = Path("/etc/squid/squid.conf").read_text()
        lab = "acl lab src 192.0.2.0/24\n"
        if auth == "basic":
            hashed = sh("openssl", "passwd", "-apr1", "corp-pw").stdout.strip()
            (self.folder / "passwd").write_text(f"corp:{hashed}\n")
            lab += (
                f"auth_param basic program {HELPERS}/basic_ncsa_auth {self.folder}/passwd\nauth_param basic realm lab\n"
                f"acl authenticated proxy_auth REQUIRED\nhttp_access allow lab authenticated\n"
            )
        elif auth == "digest":
            (self.folder / "digest").write_text("corp:corp-pw\n")
            lab += (
                f"auth_param digest program {HELPERS}/digest_file_auth {self.folder}/digest\nauth_param digest realm "
                f"lab\nacl authenticated proxy_auth REQUIRED\nhttp_access allow lab authenticated\n"
            )
        elif auth == "ntlm":
            lab += (
                f"auth_param ntlm program {HELPERS}/ntlm_fake_auth\nauth_param ntlm children 2\nacl authenticated "
                f"proxy_auth REQUIRED\nhttp_access allow lab authenticated\n"
            )
        elif auth == "negotiate":  # Kerberos: squid's own helper, with the proxy's keytab from the lab's KDC
            keytab = kdc.add_service(f"HTTP/{PROXY_NAME}")
            lab += (
                f"auth_param negotiate program {HELPERS}/negotiate_kerberos_auth -k {keytab} -s "
                f"HTTP/{PROXY_NAME}@{REALM}\nauth_param negotiate children 2\nauth_param negotiate keep_alive on\nacl "
                f"authenticated proxy_auth REQUIRED\nhttp_access allow lab authenticated\n"
            )
        else:
            lab += "http_access allow lab\n"
        (self.folder / "lab.conf").write_text(lab)
        conf = stock.replace("include /etc/squid/conf.d/*.conf", f"include {self.folder}/lab.conf").replace(
            "\nhttp_port 3128\n", f"\nhttp_port {ROUTER_IN}:3128\n"
        )
        conf += (
            f"\npid_filename {self.folder}/squid.pid\ncache_log {self.folder}/cache.log\naccess_log "
            f"stdio:{self.folder}/access.log\ncoredump_dir {self.folder}\nshutdown_lifetime 1 seconds\n"
            # The scheme of each Proxy-Authorization that reached squid ("-": none), as tests/squid.py logs it.
            "logformat authorization %rm %ru %{Proxy-Authorization}>h\n"
            f"access_log stdio:{self.folder}/authorization.log authorization\n"
        )
        (self.folder / "squid.conf").write_text(conf)
        for f in self.folder.iterdir():
            os.chmod(f, 0o644)
        env = kdc.env if kdc is not None else None  # the helper finds the realm by KRB5_CONFIG
        self.process = subprocess.Popen(
            in_ns(ROUTER, shutil.which("squid") or "/usr/sbin/squid", "-N", "-f", str(self.folder / "squid.conf")),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=env,
        )
        wait_port(ROUTER, ROUTER_IN, 3128, self.process)

    def access_log(self) -> str:
        path = self.folder / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def authorizations(self) -> list[str]:
        """The scheme of every Proxy-Authorization that reached squid, in order (never the value)."""
        path = self.folder / "authorization.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        values = (line.split(" ", 2)[2] for line in lines if line.count(" ") >= 2)
        return [value.replace("%20", " ").split(" ")[0] for value in values if value != "-"]

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)
        subprocess.run(["pkill", "-f", str(self.folder)], capture_output=True)


class ControlPlane:
    """wake / status / kill as the Lambdas answer them (`fluidity control-plane` over moto's
    ECS, HTTPS on 443 with a certificate from a CA of its own), and ECS's scheduler starting
    the task at the server's address. Its log records who called: the laptop's own address
    when the agent goes direct, the proxy's when it goes through one."""

    def __init__(self, work: Path) -> None:
        from aws import EcsScheduler, MotoAws
        from support import FLUIDITY

        from tunnel.wire import pki

        self.moto = MotoAws(address=AWS_SIDE)
        service = self.moto.make_service(desired=0, port=443)
        self.scheduler = EcsScheduler(self.moto, service, public_ip=SERVER)
        ca_cert, ca_key = pki.make_ca("Lab API CA")
        self.ca = pki.save(work, "plane-ca", ca_cert, ca_key, force=True).cert_path
        issued = pki.save(
            work,
            "plane",
            *pki.issue(ca_cert, ca_key, PLANE_NAME, server=True, dns_names=(PLANE_NAME,), ip_addresses=(PLANE,)),
            force=True,
        )
        self.log_path = work / "control-plane.log"
        env = {**self.moto.env, "CLUSTER_NAME": "fluidity", "SERVICE_NAME": "fluidity-server", "CONTAINER_PORT": "443"}
        self.process = start(
            INTERNET,
            [
                FLUIDITY,
                "control-plane",
                "--api-key",
                API_KEY,
                "--host",
                PLANE,
                "--port",
                "443",
                "--tls-cert",
                str(issued.cert_path),
                "--tls-key",
                str(issued.key_path),
            ],
            self.log_path,
            env,
        )
        wait_port(INTERNET, PLANE, 443, self.process)

    def lifecycle(self, host: str) -> dict:
        """The agent's lifecycle block for the control plane at `host` (its name or address)."""
        return {
            "wake_endpoint": f"https://{host}/wake",
            "kill_endpoint": f"https://{host}/kill",
            "api_key": API_KEY,
            "wake_retry_interval": "0.3s",
        }

    def calls(self) -> list[str]:
        """Each request as the control plane logged it: `POST /wake from 192.0.2.10 -> 200`."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [line.split("] ", 1)[-1] for line in text.splitlines() if " from " in line and " -> " in line]

    def stop(self) -> None:
        stop(self.process)
        self.scheduler.stop()
        self.moto.stop()


def wait_port(ns: str, host: str, port: int, process: subprocess.Popen, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited {process.returncode}")
        if (
            subprocess.run(
                in_ns(ns, "bash", "-c", f"exec 3<>/dev/tcp/{host}/{port}"), capture_output=True, timeout=10
            ).returncode
            == 0
        ):
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {host}:{port} in {ns}")


def start(ns: str, argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            in_ns(ns, *argv), stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env} if env else None
        )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def laptop_curl(*args: str, timeout: float = 20) -> tuple[int, str, float | None]:
    """(exit code, body or error, time to first byte)."""
    done = subprocess.run(
        in_ns(LAPTOP, "curl", "-sS", "--max-time", str(int(timeout)), "-w", "\n%{time_starttransfer}", *args),
        capture_output=True,
        text=True,
        timeout=timeout + 10,
    )
    body, _, ttfb = done.stdout.rpartition("\n")
    return (
        done.returncode,
        (body if done.returncode == 0 else (body or done.stderr.strip())),
        float(ttfb) if done.returncode == 0 and ttfb else None,
    )


def run_agent(work: Path, certs, name: str, env: dict | None = None, **config) -> tuple[subprocess.Popen, Path]:
    import yaml

    settings = {
        "proxy_port": 8080,
        "server_ip": SERVER,
        "server_port": 443,
        "server_name": "fluidity-server",
        "cert_file": certs.path("client.pem"),
        "key_file": certs.path("client.key"),
        "ca_file": certs.path("ca.pem"),
        "log_level": "info",
        "tunnel_wait": "2s",
        "connect_timeout": "3s",
        **config,
    }
    path = work / f"agent-{name}.yaml"
    path.write_text(yaml.safe_dump(settings))
    log = work / f"agent-{name}.log"
    return start(LAPTOP, [TWISTD, "-n", "--pidfile=", "fluidity-agent", "--config", str(path)], log, env), log


def connected(seconds: float = 15.0) -> bool:
    """Whether the tunnel came up; it stops waiting at the first failure the agent reports."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        code, body, _ = laptop_curl("http://127.0.0.1:8080/health", timeout=5)
        if code == 0:
            health = json.loads(body)
            if health["connected"] or health["last_error"]:
                return bool(health["connected"])
        time.sleep(0.2)
    return False


def row(
    work: Path,
    certs,
    scenario: str,
    expect: str,
    env: dict | None = None,
    plane: ControlPlane | None = None,
    squid: Squid | None = None,
    **config,
) -> dict:
    """`plane`: the agent has no server address, only the control plane (in `config`'s
    lifecycle block). `squid`: the row keeps what that proxy logged meanwhile."""
    if ONLY.lower() not in scenario.lower():
        return {"scenario": scenario, "skipped": True}
    seen = len(plane.calls()) if plane else 0
    logged = len(squid.access_log()) if squid else 0
    answered = len(squid.authorizations()) if squid else 0
    if plane:
        env = {
            **(env or {}),
            "SSL_CERT_FILE": str(plane.ca),
        }  # the laptop trusts the API's CA, as it trusts a public one
    agent, log = run_agent(work, certs, "".join(c if c.isalnum() else "-" for c in scenario), env, **config)
    try:
        wait_port(LAPTOP, "127.0.0.1", 8080, agent)
        up = connected()
        code, got, ttfb = laptop_curl("-x", "http://127.0.0.1:8080", f"http://{ORIGIN}/")
        status, body, _ = laptop_curl("http://127.0.0.1:8080/health", timeout=5)
        health = json.loads(body) if status == 0 else {}
    finally:
        stop(agent)
    # The agent's own account of how it got out: which proxy, PAC file and authentication.
    notes = [
        line.split("] ", 1)[-1]
        for line in log.read_text(errors="replace").splitlines()
        if any(k in line for k in ("authenticated to the upstream proxy", "upstream_proxy auto", " is up"))
    ]
    result = {
        "scenario": scenario,
        "expect": expect,
        "tunnel_up": up,
        "ok": code == 0 and got == "origin",
        "ttfb_s": ttfb,
        "got": got[:800],
        "notes": notes,
    }
    if plane:
        deadline = time.monotonic() + 5  # the kill on exit is the agent's last request
        while time.monotonic() < deadline and not any("/kill" in c for c in plane.calls()[seen:]):
            time.sleep(0.1)
        result["control_plane_calls"] = plane.calls()[seen:]
        result["server_dns_name"] = health.get("server_dns_name")
    if squid:
        time.sleep(0.5)  # squid logs a tunnel when it closes: the agent's last ones just did
        result["proxy_log"] = squid.access_log()[logged:]
        result["proxy_authorizations"] = squid.authorizations()[answered:]  # the schemes the agent answered with
    return result


def forgotten_flow_row(work: Path, certs) -> dict:
    """The router forgets the tunnel's flow (its conntrack table flushed) while the tunnel is
    quiet; then a client asks for a destination. The keepalive is set long (30 s / 20 s) so
    the wait shows what the agent's probe does (probe_timeout, 3 s)."""
    scenario = "port filter forgets the tunnel's flow (conntrack flushed)"
    if ONLY.lower() not in scenario.lower():
        return {"scenario": scenario, "skipped": True}
    agent, log = run_agent(
        work, certs, "forgotten-flow", keepalive_interval="30s", keepalive_timeout="20s", tunnel_wait="20s"
    )
    try:
        wait_port(LAPTOP, "127.0.0.1", 8080, agent)
        up = connected()
        time.sleep(1.5)  # quiet: the next stream's PING is the probe
        forgot = subprocess.run(in_ns(ROUTER, "conntrack", "-F"), capture_output=True, text=True, timeout=30)
        started = time.monotonic()
        code, got, ttfb = laptop_curl("-x", "http://127.0.0.1:8080", f"http://{ORIGIN}/", timeout=40)
        waited = time.monotonic() - started
    finally:
        stop(agent)
    text = log.read_text(errors="replace")
    return {
        "scenario": scenario,
        "expect": "served",
        "tunnel_up": up,
        "ok": code == 0 and got == "origin",
        "ttfb_s": ttfb,
        "waited_s": round(waited, 2),
        "got": got[:800],
        "flushed": forgot.returncode == 0 and "emptied" in forgot.stdout + forgot.stderr,
        "tunnels_up": text.count(" is up"),
        "notes": [line.split("] ", 1)[-1] for line in text.splitlines() if "probe" in line.lower() or " is up" in line],
    }


def run() -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="fluidity-lab-"))
    os.chmod(work, 0o755)
    build(work)
    certs = make_certs(work / "certs")
    procs = []
    rows: list[dict] = []
    try:
        import yaml

        origin_dir = work / "www"
        origin_dir.mkdir()
        (origin_dir / "index.html").write_text("origin")
        procs.append(
            start(
                INTERNET,
                [sys.executable, "-m", "http.server", "--bind", ORIGIN, "--directory", str(origin_dir), "80"],
                work / "origin.log",
            )
        )
        for port in (443, 8443):
            config = {
                "host": SERVER,
                "port": port,
                "cert_file": certs.path("server.pem"),
                "key_file": certs.path("server.key"),
                "ca_file": certs.path("ca.pem"),
                "egress_allow": ["203.0.113.0/24"],
                "log_level": "info",
            }
            (work / f"server-{port}.yaml").write_text(yaml.safe_dump(config))
            procs.append(
                start(
                    INTERNET,
                    [TWISTD, "-n", "--pidfile=", "fluidity-server", "--config", str(work / f"server-{port}.yaml")],
                    work / f"server-{port}.log",
                )
            )
            wait_port(INTERNET, SERVER, port, procs[-1])
        wait_port(INTERNET, ORIGIN, 80, procs[0])
        plane = ControlPlane(work)
        procs.append(plane)
        # Rows given `plane` have no server address: they wake the server and learn where it
        # is from the control plane, through the same way out as the tunnel.
        woken = {"plane": plane, "server_ip": ""}

        firewall("port-filter")
        rows.append(row(work, certs, "port filter (80/443 only), direct, server on 443", "served"))
        rows.append(row(work, certs, "port filter (80/443 only), direct, server on 8443", "refused", server_port=8443))
        rows.append(
            row(
                work,
                certs,
                "port filter, the server woken and found by the control plane",
                "served",
                **woken,
                lifecycle=plane.lifecycle(PLANE),
            )
        )
        rows.append(forgotten_flow_row(work, certs))

        firewall("proxy-only")
        rows.append(row(work, certs, "direct with no way out but the proxy", "refused"))
        squid = Squid(work)
        try:
            rows.append(
                row(work, certs, "stock squid, server on 443", "served", upstream_proxy=f"http://{ROUTER_IN}:3128")
            )
            rows.append(
                row(
                    work,
                    certs,
                    "stock squid, server on 8443",
                    "refused",
                    upstream_proxy=f"http://{ROUTER_IN}:3128",
                    server_port=8443,
                )
            )
            rows.append(
                row(
                    work,
                    certs,
                    "stock squid, the server by a name only the proxy resolves",
                    "served",
                    upstream_proxy=f"http://{ROUTER_IN}:3128",
                    server_ip=SERVER_NAME,
                )
            )
            rows.append(
                row(
                    work,
                    certs,
                    "stock squid, the control plane by a name only the proxy resolves",
                    "served",
                    **woken,
                    lifecycle=plane.lifecycle(PLANE_NAME),
                    upstream_proxy=f"http://{ROUTER_IN}:3128",
                    squid=squid,
                )
            )
            pac = work / "proxy.pac"
            pac.write_text(f'function FindProxyForURL(url, host) {{ return "PROXY {ROUTER_IN}:3128"; }}')
            os.chmod(pac, 0o644)
            rows.append(
                row(
                    work,
                    certs,
                    "stock squid found by a PAC file (upstream_proxy: auto)",
                    "served",
                    upstream_proxy="auto",
                    pac_url=str(pac),
                    **woken,
                    lifecycle=plane.lifecycle(PLANE_NAME),
                )
            )
        finally:
            squid.stop()
        keyring = {
            "PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring",
            "XDG_DATA_HOME": str(work / "keyring"),
        }
        from support import FLUIDITY

        subprocess.run(
            [FLUIDITY, "proxy-password", "--user", "CORP\\alice", "--stdin"],
            input="pw\n",
            text=True,
            check=True,
            capture_output=True,
            timeout=60,
            env={**os.environ, **keyring},
        )
        for auth, url in (
            ("basic", f"http://corp:corp-pw@{ROUTER_IN}:3128"),
            ("digest", f"http://corp:corp-pw@{ROUTER_IN}:3128"),
            ("ntlm", f"http://CORP%5Calice:pw@{ROUTER_IN}:3128"),
        ):
            squid = Squid(work, auth)
            try:
                rows.append(
                    row(
                        work,
                        certs,
                        f"squid asking for {auth.upper() if auth == 'ntlm' else auth.capitalize()}",
                        "served",
                        upstream_proxy=url,
                        **woken,
                        lifecycle=plane.lifecycle(PLANE_NAME),
                        squid=squid,
                    )
                )
                if auth == "ntlm":  # found by the PAC file, the password in the system's credential store
                    rows.append(
                        row(
                            work,
                            certs,
                            "squid asking for NTLM, found by a PAC file, the password from the keyring",
                            "served",
                            env=keyring,
                            upstream_proxy="auto",
                            pac_url=str(pac),
                            upstream_proxy_user="CORP\\alice",
                            upstream_proxy_password="keyring",
                            upstream_proxy_auth_allow=[ROUTER_IN],  # the PAC file names it: credentials once allowed
                            **woken,
                            lifecycle=plane.lifecycle(PLANE_NAME),
                            squid=squid,
                        )
                    )
            finally:
                squid.stop()
        kdc = Kdc(work / "kdc", REALM, ROUTER_IN, prefix=tuple(in_ns(ROUTER)))
        try:
            kdc.add_user("alice", "alice-pw")
            squid = Squid(work, "negotiate", kdc)
            try:
                # No credentials configured: the agent uses the logged-in user's ticket (kinit), as single sign-on does.
                ticket = kdc.kinit("alice", "alice-pw", prefix=tuple(in_ns(LAPTOP)))
                rows.append(
                    row(
                        work,
                        certs,
                        "squid asking for Negotiate (Kerberos, the user's ticket)",
                        "served",
                        env=ticket,
                        upstream_proxy=f"http://{PROXY_NAME}:3128",
                        **woken,
                        lifecycle=plane.lifecycle(PLANE_NAME),
                        squid=squid,
                    )
                )  # whom squid's Kerberos helper let through
                by_name = work / "proxy-by-name.pac"
                by_name.write_text(f'function FindProxyForURL(url, host) {{ return "PROXY {PROXY_NAME}:3128"; }}')
                os.chmod(by_name, 0o644)
                for scenario, expect, allow in (
                    (
                        "squid asking for Negotiate, found by a PAC file, its domain allowed",
                        "served",
                        ["*.corp.lab.test"],
                    ),
                    ("squid asking for Negotiate, found by a PAC file, not allowed", "refused", []),
                ):
                    rows.append(
                        row(
                            work,
                            certs,
                            scenario,
                            expect,
                            env=ticket,
                            upstream_proxy="auto",
                            pac_url=str(by_name),
                            **({"upstream_proxy_auth_allow": allow} if allow else {}),
                            squid=squid,
                        )
                    )
                no_ticket = {"KRB5_CONFIG": ticket["KRB5_CONFIG"], "KRB5CCNAME": f"FILE:{work}/kdc/nobody.ccache"}
                rows.append(
                    row(
                        work,
                        certs,
                        "squid asking for Negotiate, no ticket",
                        "refused",
                        env=no_ticket,
                        upstream_proxy=f"http://{PROXY_NAME}:3128",
                    )
                )
            finally:
                squid.stop()
        finally:
            kdc.stop()
        if os.path.exists(MITMDUMP):
            mitm = start(
                ROUTER,
                [
                    MITMDUMP,
                    "--listen-host",
                    ROUTER_IN,
                    "--listen-port",
                    "8081",
                    "--set",
                    f"confdir={work}/mitm",
                    "--set",
                    "ssl_insecure=true",
                ],
                work / "mitm.log",
            )
            try:
                wait_port(ROUTER, ROUTER_IN, 8081, mitm)
                rows.append(
                    row(
                        work,
                        certs,
                        "TLS-intercepting proxy (mitmproxy)",
                        "named",
                        upstream_proxy=f"http://{ROUTER_IN}:8081",
                    )
                )
            finally:
                stop(mitm)
    finally:
        for process in procs:
            process.stop() if isinstance(process, ControlPlane) else stop(process)
        shutil.rmtree(work, ignore_errors=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", default="", help="run just the rows whose scenario contains this text")
    args = parser.parse_args()
    global ONLY
    ONLY = args.only
    if os.environ.get("FLUIDITY_LAB_NS") != "1":
        if os.geteuid() != 0 or not shutil.which("unshare"):
            raise SystemExit("bench/firewall_lab.py needs root and unshare(1)")
        return subprocess.call(
            ["unshare", "--net", "--mount", sys.executable, *sys.argv], env={**os.environ, "FLUIDITY_LAB_NS": "1"}
        )
    rows = [r for r in run() if not r.get("skipped")]
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        what = f"served, first byte {r['ttfb_s'] * 1000:.0f} ms" if r["ok"] else f"not served: {r['got'][:160]}"
        print(f"{r['scenario']:<58} {what}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
