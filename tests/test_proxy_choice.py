"""`upstream_proxy: auto`: the proxy a PAC file names, evaluated for each host the agent dials
(issue 25, item 4). The PAC file is served over HTTP on loopback and evaluated by pypac (its
JavaScript run by dukpy), the proxy is a real squid, and the agent and doctor are run as a
user runs them."""

from __future__ import annotations

import http.server
import threading

import pytest
from squid import Squid
from support import agent_config, curl, served_by_a_new_agent, server_config, start_twistd, wait_connected
from test_doctor import doctor

from tunnel.agent.proxy_choice import ProxyChoice, discover

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)


class PacServer:
    """A web server with one file, /proxy.pac, as a corporate network serves it (or
    /wpad.dat on port 80 of `address`, as a WPAD host does)."""

    def __init__(
        self,
        script: str,
        content_type: str = "application/x-ns-proxy-autoconfig",
        address: tuple[str, int] = ("127.0.0.1", 0),
        path: str = "/proxy.pac",
    ) -> None:
        body = script.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200 if self.path == path else 404)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(address, Handler)
        self.url = f"http://{address[0]}:{self.httpd.server_address[1]}{path}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def through_squid_pac(squid_port: int) -> str:
    """The server's address through the proxy; `localhost` (the control plane's name here) direct."""
    return (
        f'function FindProxyForURL(url, host) {{ if (host == "localhost") return "DIRECT"; return "PROXY '
        f'127.0.0.1:{squid_port}; DIRECT"; }}'
    )


@pytest.fixture
def server(certs, tmp_path):
    proc = start_twistd("server", server_config(certs), tmp_path)
    yield proc
    proc.stop()


def test_auto_takes_the_proxy_the_pac_file_names_for_the_server(certs, server, http_origin, tmp_path):
    squid = Squid((), {}, ssl_ports=(server.port,))
    pac = PacServer(through_squid_pac(squid.port))
    try:
        agent = served_by_a_new_agent(
            agent_config(certs, server.port, upstream_proxy="auto", pac_url=pac.url), tmp_path, http_origin.port
        )
        assert f"CONNECT 127.0.0.1:{server.port}" in squid.access_log(), squid.access_log()
        assert f"upstream_proxy auto: using the PAC file at {pac.url} (pac_url)" in agent.log()
        agent.assert_no_unhandled_errors()

        code, out = doctor(agent_config(certs, server.port, upstream_proxy="auto", pac_url=pac.url), tmp_path)
        assert code == 0, out
        assert f"ok    proxy discovery: upstream_proxy auto uses the PAC file at {pac.url} (pac_url)" in out, out
        assert (
            f"http://127.0.0.1:{squid.port} (from the PAC file at {pac.url} (pac_url)) answered 'HTTP/1.1 200" in out
        ), out
        assert "ALPN h2" in out and out.strip().endswith("all good."), out
    finally:
        pac.close()
        squid.stop()


def test_a_pac_file_that_says_direct_is_honoured(certs, server, http_origin, tmp_path):
    squid = Squid((), {}, ssl_ports=(server.port,))
    pac = PacServer(
        f'function FindProxyForURL(url, host) {{ if (isInNet(host, "127.0.0.0", "255.0.0.0")) return "DIRECT"; return '
        f'"PROXY 127.0.0.1:{squid.port}"; }}'
    )
    try:
        agent = start_twistd(
            "agent", agent_config(certs, server.port, upstream_proxy="auto", pac_url=pac.url), tmp_path
        )
        try:
            wait_connected(agent, 20)
            result = curl("-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/plain")
            assert result.returncode == 0, result
        finally:
            assert agent.stop() == 0
        assert "CONNECT" not in squid.access_log(), squid.access_log()
        code, out = doctor(agent_config(certs, server.port, upstream_proxy="auto", pac_url=pac.url), tmp_path)
        assert code == 0 and f"none for 127.0.0.1: DIRECT from the PAC file at {pac.url}" in out, out
    finally:
        pac.close()
        squid.stop()


def test_no_pac_file_falls_back_to_the_environment_then_direct(tmp_path):
    missing = ProxyChoice("auto", environ={"HTTPS_PROXY": "http://proxy.corp.test:3128", "NO_PROXY": "intranet.test"})
    missing.found = discover("http://127.0.0.1:9/none.pac", timeout=1.0)  # nothing listens there
    assert missing.found is None
    proxy, why = missing.choose("203.0.113.7", 443)
    assert (proxy.host, proxy.port) == ("proxy.corp.test", 3128) and why.startswith("$HTTPS_PROXY")
    assert missing.choose("intranet.test", 443)[0] is None


def test_a_pac_file_served_as_something_else_is_not_taken():
    """pypac's rule, as browsers': only the PAC content types count (a captive portal's HTML page is no PAC file)."""
    pac = PacServer('function FindProxyForURL(url, host) { return "PROXY 127.0.0.1:9"; }', content_type="text/html")
    try:
        assert discover(pac.url, timeout=2.0) is None
    finally:
        pac.close()


def test_pac_url_without_auto_is_a_one_line_error(certs, tmp_path):
    import subprocess

    import yaml
    from support import TWISTD

    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(agent_config(certs, 1, pac_url="http://127.0.0.1:9/proxy.pac")))
    done = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "fluidity-agent", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "'pac_url' is used only with upstream_proxy: auto" in done.stderr + done.stdout, (
        done
    )


WPAD_PROBE = r"""
import http.server, json, sys, threading
sys.path.insert(0, sys.argv[1])
body = b'function FindProxyForURL(url, host) { return "PROXY proxy.corp.lab.test:3128; DIRECT"; }'
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/wpad.dat" else 404)
        self.send_header("Content-Type", "application/x-ns-proxy-autoconfig")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 80), Handler)
threading.Thread(target=httpd.serve_forever, daemon=True).start()
from tunnel.agent.proxy_choice import ProxyChoice, discover
import socket
choice = ProxyChoice("auto", environ={})
choice.found = discover(timeout=2.0)
proxy, why = choice.choose("203.0.113.7", 443)
where = choice.found.where if choice.found else None
address = [proxy.host, proxy.port] if proxy else None
print(json.dumps({"fqdn": socket.getfqdn(), "where": where, "proxy": address, "why": why}))
"""


def test_wpad_finds_the_pac_file_by_the_laptops_domain(tmp_path):
    """WPAD for real: a laptop named laptop.corp.lab.test (its own UTS namespace), names
    resolved from its own hosts file (its own mount namespace), wpad.corp.lab.test serving
    wpad.dat on port 80 (its own network namespace: nothing leaves the machine)."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    assert shutil.which("unshare") and os.geteuid() == 0, "needs root and unshare (util-linux; .ci/run installs it)"
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost laptop.corp.lab.test laptop wpad.corp.lab.test\n")
    probe = tmp_path / "probe.py"
    probe.write_text(WPAD_PROBE)
    root = str(Path(__file__).resolve().parent.parent)
    script = (
        f"mount --bind {hosts} /etc/hosts && hostname laptop.corp.lab.test && ip link set lo up && exec "
        f"{sys.executable} {probe} {root}"
    )
    done = subprocess.run(
        ["unshare", "--mount", "--uts", "--net", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": root},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["fqdn"] == "laptop.corp.lab.test", found
    assert found["where"] == "the PAC file at http://wpad.corp.lab.test/wpad.dat (WPAD)", found
    assert (
        found["proxy"] == ["proxy.corp.lab.test", 3128]
        and found["why"] == "from the PAC file at http://wpad.corp.lab.test/wpad.dat (WPAD)"
    ), found
