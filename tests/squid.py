"""A real squid (Debian's package) on loopback with its own auth helpers, for proxy tests.

Squid runs as its `proxy` user, so its folder is one it can write and its helpers' files
are ones it can read. CONNECT is refused to ports outside `SSL_ports` as in the stock
configuration; `ssl_ports` adds the test's own server port to that list. `hosts` is what
squid resolves (its `hosts_file`: the lab has no DNS); `refuse_raw_ips` adds the category
filter's rule that refuses a CONNECT to a bare IPv4 address. `tls` (certificate, key) makes
it an HTTPS proxy (`https_port`: TLS from the client to squid, CONNECT inside).
`authorizations()` reads squid's own log of the Proxy-Authorization each request brought.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import unquote

from support import free_port, wait_for_port

HELPERS = Path("/usr/lib/squid")
REALM = "fluidity-lab"


def auth_block(scheme: str, folder: Path, users: dict[str, str]) -> str:
    if scheme == "basic":
        hashed = {
            u: subprocess.run(
                ["openssl", "passwd", "-apr1", p], capture_output=True, text=True, check=True
            ).stdout.strip()
            for u, p in users.items()
        }
        (folder / "passwd").write_text("".join(f"{u}:{h}\n" for u, h in hashed.items()))  # htpasswd's $apr1$
        return (
            f"auth_param basic program {HELPERS}/basic_ncsa_auth {folder}/passwd\nauth_param basic realm {REALM}\n"
            f"auth_param basic children 2\n"
        )
    if scheme == "digest":
        (folder / "digest").write_text("".join(f"{u}:{p}\n" for u, p in users.items()))
        return (
            f"auth_param digest program {HELPERS}/digest_file_auth {folder}/digest\nauth_param digest realm {REALM}\n"
            f"auth_param digest children 2\n"
        )
    if scheme == "ntlm":  # squid's own test helper: runs the real NTLM exchange, accepts any user
        return f"auth_param ntlm program {HELPERS}/ntlm_fake_auth\nauth_param ntlm children 2\n"
    raise ValueError(scheme)


class Squid:
    def __init__(
        self,
        schemes: tuple[str, ...],
        users: dict[str, str],
        ssl_ports: tuple[int, ...] = (),
        hosts: dict[str, str] | None = None,
        refuse_raw_ips: bool = False,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        binary = shutil.which("squid") or "/usr/sbin/squid"
        assert os.path.exists(binary), "squid is needed (apt-get install squid; .ci/run installs it)"
        self.folder = Path(tempfile.mkdtemp(prefix="fluidity-squid-"))
        os.chmod(self.folder, 0o777)  # squid drops to its `proxy` user
        self.port = free_port()
        blocks = "".join(auth_block(s, self.folder, users) for s in schemes)
        if hosts is not None:
            (self.folder / "hosts").write_text("".join(f"{ip} {name}\n" for name, ip in hosts.items()))
            blocks += f"hosts_file {self.folder}/hosts\n"
        if refuse_raw_ips:
            blocks += "acl raw_ip dstdom_regex -n ^[0-9.]+$\nhttp_access deny CONNECT raw_ip\n"
        listen = f"http_port 127.0.0.1:{self.port}\n"
        if tls is not None:
            for name, source in zip(("proxy.pem", "proxy.key"), tls, strict=True):
                shutil.copyfile(source, self.folder / name)
            listen = (
                f"https_port 127.0.0.1:{self.port} tls-cert={self.folder}/proxy.pem tls-key={self.folder}/proxy.key\n"
            )
        for f in self.folder.iterdir():
            os.chmod(f, 0o644)
        auth = (
            "acl authenticated proxy_auth REQUIRED\nhttp_access allow authenticated\n"
            if schemes
            else "http_access allow localhost\n"
        )
        (self.folder / "squid.conf").write_text(
            f"{listen}"
            f"pid_filename {self.folder}/squid.pid\ncache_log {self.folder}/cache.log\naccess_log "
            f"stdio:{self.folder}/access.log\n"
            # What each request carried in Proxy-Authorization, as it reached squid ("-": nothing).
            "logformat fluidity_authorization %rm %ru %{Proxy-Authorization}>h\n"
            f"access_log stdio:{self.folder}/authorization.log fluidity_authorization\n"
            f"coredump_dir {self.folder}\ncache deny all\ncache_mem 8 MB\nshutdown_lifetime 1 seconds\n"
            f"{blocks}"
            f"acl SSL_ports port 443 {' '.join(str(p) for p in ssl_ports)}\nacl CONNECT method CONNECT\n"
            "http_access deny CONNECT !SSL_ports\n"
            f"{auth}http_access deny all\n"
        )
        self.process = subprocess.Popen(
            [binary, "-N", "-f", str(self.folder / "squid.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        try:
            wait_for_port(self.port, 20, self.process)
        except Exception:
            self.stop()
            raise RuntimeError(f"squid did not start:\n{self.cache_log()}") from None

    def cache_log(self) -> str:
        path = self.folder / "cache.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def access_log(self) -> str:
        path = self.folder / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def authorizations(self) -> list[str]:
        """Every Proxy-Authorization value that reached squid, in order (its own log of them)."""
        path = self.folder / "authorization.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        values = (line.split(" ", 2)[2] for line in lines if line.count(" ") >= 2)
        return [unquote(value) for value in values if value != "-"]  # squid writes it %-encoded

    def stop(self) -> None:
        if self.process.poll() is None:  # a test's proxy: no need to wait out its shutdown
            self.process.kill()
            self.process.wait(10)
        subprocess.run(["pkill", "-f", str(self.folder)], capture_output=True)  # its helpers
        shutil.rmtree(self.folder, ignore_errors=True)
