"""What `fluidity local` runs: the loopback demo's two configs, from a checkout or built in.

In a checkout the demo reads `configs/server.local.yaml` and `configs/agent.local.yaml`
(edit them to try a setting); an installed `fluidity` run anywhere else has no such folder,
so the same settings are built in here (tests/test_local_demo.py keeps the two equal).
Certificates are passed by flag, so either config works wherever the certificates are:
`certs/` beside `configs/` in a checkout, else the user's data folder.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml

SERVER = {
    "host": "127.0.0.1",
    "port": 8443,
    "egress_allow": ["127.0.0.0/8", "::1"],  # the demo may tunnel to local test servers
    "log_level": "info",
    "log_format": "text",
    "metrics": {"emit_metrics": False},
}
AGENT = {
    "proxy_host": ["127.0.0.1", "::1"],
    "proxy_port": 8080,
    "server_ip": "127.0.0.1",
    "server_port": 8443,
    "server_name": "fluidity-server",
    "log_level": "info",
}
CERT_FLAGS = {"server": ("server.pem", "server.key"), "agent": ("client.pem", "client.key")}


def default_certs(configs: Path) -> Path:
    """`certs/` in a checkout (beside its configs/), else $XDG_DATA_HOME/fluidity/local-certs."""
    if (configs / "agent.local.yaml").exists():
        return Path("certs")
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data) / "fluidity" / "local-certs"


def config_files(configs: Path) -> dict[str, Path]:
    """The config each role runs with: the checkout's when it has them, else the built-in ones."""
    found = {role: configs / f"{role}.local.yaml" for role in ("server", "agent")}
    if all(path.exists() for path in found.values()):
        return found
    folder = Path(tempfile.mkdtemp(prefix="fluidity-local-"))
    for role, settings in (("server", SERVER), ("agent", AGENT)):
        found[role] = folder / f"{role}.local.yaml"
        found[role].write_text(yaml.safe_dump(settings))
    return found


def cert_flags(role: str, certs: Path) -> list[str]:
    cert, key = CERT_FLAGS[role]
    base = certs.resolve()
    return ["--cert-file", str(base / cert), "--key-file", str(base / key), "--ca-file", str(base / "ca.pem")]
