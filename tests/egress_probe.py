"""Run inside a loopback-only network namespace (`unshare -n`): a broken egress policy
cannot send a packet off the machine from here, because there is nowhere to send it.

Starts a server and an agent, a canary listener on a loopback port that the allow list
does not open, and asks for forbidden destinations through both the http/1.1 path
(curl --proxy https://) and the agent's HTTP/2 path. Prints JSON results.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from support import CertSet, EchoServer, agent_config, curl, proxy_connect, server_config, start_twistd, wait_connected


def main(certs_dir: str, workdir: str) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    certs = CertSet(Path(certs_dir))
    work = Path(workdir)
    allowed = EchoServer()
    canary = socket.socket()
    canary.bind(("127.0.0.1", 0))
    canary.listen(16)
    canary.settimeout(0.2)
    canary_port = canary.getsockname()[1]
    touched = []

    def watch():
        while True:
            try:
                conn, _ = canary.accept()
                touched.append(1)
                conn.close()
            except TimeoutError:
                continue
            except OSError:
                return

    threading.Thread(target=watch, daemon=True).start()
    server = start_twistd("server", server_config(certs, egress_allow=[f"127.0.0.1:{allowed.port}"]), work)
    agent = start_twistd("agent", agent_config(certs, server.port), work)
    wait_connected(agent)
    targets = [
        "169.254.169.254:80",
        "169.254.170.2:80",
        "10.1.2.3:80",
        f"127.0.0.1:{canary_port}",
        f"localhost:{canary_port}",
        f"2130706433:{canary_port}",
        f"0x7f000001:{canary_port}",
        f"0177.0.0.1:{canary_port}",
        "[::ffff:169.254.169.254]:80",
        f"[::ffff:127.0.0.1]:{canary_port}",
        "[fe80::1%25lo]:80",
        # IPv6 forms that carry an IPv4 address, as literals and as what a name resolves to
        # (the namespace's /etc/hosts, see test_egress.py).
        f"[::127.0.0.1]:{canary_port}",
        f"[::ffff:0:127.0.0.1]:{canary_port}",
        f"[64:ff9b:1::7f00:1]:{canary_port}",
        f"[64:ff9b::7f00:1]:{canary_port}",
        "[fec0::1]:80",
        f"v4-compatible.fluidity.test:{canary_port}",
        f"v4-translated.fluidity.test:{canary_port}",
        f"nat64-local.fluidity.test:{canary_port}",
        "site-local.fluidity.test:80",
    ]
    results = {"h2": {}, "http/1.1": {}}
    for target in targets:
        sock, head = proxy_connect(agent.port, target)
        sock.close()
        results["h2"][target] = head.split(b"\r\n", 1)[0].decode(errors="replace")
        r = curl(
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_connect}",
            "--proxy",
            f"https://127.0.0.1:{server.port}",
            "--proxy-cacert",
            certs.path("ca.pem"),
            "--proxy-cert",
            certs.path("client.pem"),
            "--proxy-key",
            certs.path("client.key"),
            "-p",
            f"http://{target}/",
            timeout=10,
        )
        results["http/1.1"][target] = r.stdout.decode()
    sock, head = proxy_connect(agent.port, f"127.0.0.1:{allowed.port}")
    sock.sendall(b"ping")
    results["allowed"] = [head.split(b"\r\n", 1)[0].decode(), sock.recv(4).decode()]
    sock.close()
    agent.stop()
    server.stop()
    results["allowed_port"] = allowed.port
    results["canary_connections"] = len(touched)
    results["dial_lines"] = [line for line in server.log().splitlines() if "dialling" in line]
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
