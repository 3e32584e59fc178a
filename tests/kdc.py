"""A real Kerberos realm (MIT's krb5kdc from Debian's packages) made for one test run.

`Kdc` writes a realm's configuration into a folder of its own (nothing in /etc is
touched: every program is pointed at it by KRB5_CONFIG and KRB5_KDC_PROFILE), creates its
database, a user with a password and a service principal with a keytab, and runs krb5kdc
in the foreground. `prefix` runs it inside a network namespace (`ip netns exec NS`).
`kinit` gets a user's ticket into a cache of its own, as a logged-in user has one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path


class Kdc:
    def __init__(self, folder: Path, realm: str, host: str, port: int = 88, prefix: tuple[str, ...] = ()) -> None:
        for tool in ("krb5kdc", "kdb5_util", "kadmin.local", "kinit"):
            assert shutil.which(tool), (
                f"{tool} is needed (krb5-kdc, krb5-admin-server, krb5-user; scripts/install-test-tools installs them)"
            )
        self.folder, self.realm, self.prefix = folder, realm, list(prefix)
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o755)  # squid's helper reads the keytab and krb5.conf as its own user
        self.config = folder / "krb5.conf"
        self.config.write_text(
            "[libdefaults]\n"
            f"  default_realm = {realm}\n"
            "  dns_lookup_kdc = false\n  dns_lookup_realm = false\n"
            "  dns_canonicalize_hostname = false\n  rdns = false\n"  # the laptop has no DNS
            "  udp_preference_limit = 1\n"  # TCP: what a proxy-only network is likeliest to pass
            f"[realms]\n  {realm} = {{\n    kdc = {host}:{port}\n  }}\n"
        )
        profile = folder / "kdc.conf"
        profile.write_text(
            f"[kdcdefaults]\n  kdc_ports = {port}\n  kdc_tcp_ports = {port}\n"
            f"[realms]\n  {realm} = {{\n    database_name = {folder}/principal\n    key_stash_file = {folder}/stash\n"
            f"    acl_file = {folder}/kadm5.acl\n  }}\n"
            f"[logging]\n  kdc = FILE:{folder}/kdc.log\n"
        )
        self.env = {
            **os.environ,
            "KRB5_CONFIG": str(self.config),
            "KRB5_KDC_PROFILE": str(profile),
            "KRB5RCACHETYPE": "none",
        }
        self._run("kdb5_util", "create", "-s", "-r", realm, "-P", os.urandom(12).hex())
        self.process = subprocess.Popen(
            [*self.prefix, "krb5kdc", "-n"], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        time.sleep(0.3)
        if self.process.poll() is not None:
            raise RuntimeError(f"krb5kdc exited {self.process.returncode}: {self.log()[-2000:]}")

    def _run(self, *argv: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [*self.prefix, *argv], env=self.env, input=stdin, capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stdout}{done.stderr}")
        return done.stdout

    def add_user(self, name: str, password: str) -> None:
        self._run("kadmin.local", "-q", f"addprinc -pw {password} {name}")

    def add_service(self, principal: str) -> Path:
        """The service's principal and a keytab holding its key (readable by the service's user)."""
        keytab = self.folder / (principal.replace("/", "_") + ".keytab")
        self._run("kadmin.local", "-q", f"addprinc -randkey {principal}")
        self._run("kadmin.local", "-q", f"ktadd -k {keytab} {principal}")
        os.chmod(keytab, 0o644)
        return keytab

    def kinit(self, user: str, password: str, prefix: tuple[str, ...] | None = None) -> dict:
        """A ticket for the user, in a cache of its own; the environment that finds it."""
        cache = self.folder / f"{user}.ccache"
        env = {"KRB5_CONFIG": str(self.config), "KRB5CCNAME": f"FILE:{cache}"}
        done = subprocess.run(
            [*(self.prefix if prefix is None else prefix), "kinit", user],
            env={**os.environ, **env},
            input=password + "\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"kinit {user} failed: {done.stdout}{done.stderr}")
        return env

    def log(self) -> str:
        path = self.folder / "kdc.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
