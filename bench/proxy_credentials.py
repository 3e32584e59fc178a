"""Which proxies receive which credentials, by how the agent learned of the proxy.

    .venv/bin/python bench/proxy_credentials.py        (root: the WPAD rows use unshare)

For each way a proxy reaches the agent (named in upstream_proxy, $HTTPS_PROXY, a PAC file
at pac_url, WPAD; the last two also with upstream_proxy_auth_allow naming it) and each
scheme a real squid asks for (Basic, Digest, NTLM), an agent with a user and password
configured starts, and squid's own log says which Proxy-Authorization schemes reached it
(never the values). Everything on loopback; WPAD as in tests/test_proxy_trust.py. Negotiate
as the logged-in user needs a KDC: bench/firewall_lab.py has those rows.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from squid import Squid  # noqa: E402
from support import agent_config, make_certs, server_config, start_twistd, wait_until  # noqa: E402
from test_proxy_choice import PacServer  # noqa: E402
from test_proxy_trust import PROXY, USERS, Wpad  # noqa: E402

from tunnel.config import AGENT_KEYS  # noqa: E402

SCHEMES = ("basic", "digest", "ntlm")
MODES = ("upstream_proxy", "$HTTPS_PROXY", "PAC (pac_url)", "PAC, allowed", "WPAD", "WPAD, allowed")


def health(agent) -> dict:
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{agent.port}/health", timeout=2) as answer:
            return json.load(answer)
    except OSError:
        return {}


def cell(work: Path, certs, server, squid: Squid, mode: str) -> str:
    """What squid received from one agent in this mode: the schemes, and whether the tunnel came up."""
    settings: dict = {"upstream_proxy_user": "alice", "upstream_proxy_password": USERS["alice"]}
    env, prefix, pac, wpad = None, (), None, None
    if mode == "upstream_proxy":
        settings["upstream_proxy"] = f"http://127.0.0.1:{squid.port}"
    elif mode == "$HTTPS_PROXY":
        env = {"HTTPS_PROXY": f"http://127.0.0.1:{squid.port}"}
    elif mode.startswith("PAC"):
        pac = PacServer(f'function FindProxyForURL(url, host) {{ return "PROXY 127.0.0.1:{squid.port}"; }}')
        settings.update(upstream_proxy="auto", pac_url=pac.url)
    else:
        wpad = Wpad(work, squid.port)
        settings["upstream_proxy"], prefix = "auto", wpad.prefix
    if mode.endswith("allowed"):
        if "upstream_proxy_auth_allow" not in {k.name for k in AGENT_KEYS}:
            return "no such setting"
        settings["upstream_proxy_auth_allow"] = ["127.0.0.1" if pac else PROXY]
    before = len(squid.authorizations())
    agent = start_twistd("agent", agent_config(certs, server.port, **settings), work, prefix=prefix, env=env)
    try:
        state = wait_until(lambda: (h := health(agent)) and (h["connected"] or h["last_error"]) and h, 20)
    finally:
        agent.stop()
        for helper in (pac, wpad):
            if helper is not None:
                helper.close()
    time.sleep(0.3)
    got = sorted({value.split(" ")[0] for value in squid.authorizations()[before:]})
    return f"{', '.join(got) or 'nothing'}; tunnel {'up' if state['connected'] else 'refused'}"


def main() -> int:
    import random

    import support

    # Start somewhere in the port block: pytest runs on this machine hand out its first ports.
    support._port_cursor["next"] = random.randrange(len(support._port_cursor["block"]))
    work = Path(tempfile.mkdtemp(prefix="fluidity-creds-"))
    certs = make_certs(work / "certs")
    server = start_twistd("server", server_config(certs), work)
    print("| how the agent learned of the proxy | " + " | ".join(f"squid asks for {s}" for s in SCHEMES) + " |")
    print("|---|" + "---|" * len(SCHEMES))
    squids = {s: Squid((s,), USERS, ssl_ports=(server.port,)) for s in SCHEMES}
    try:
        for mode in MODES:
            print(f"| {mode} | " + " | ".join(cell(work, certs, server, squids[s], mode) for s in SCHEMES) + " |")
    finally:
        for squid in squids.values():
            squid.stop()
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
