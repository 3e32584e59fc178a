"""`GET /proxy.pac`, evaluated by a real PAC engine (pypac on Duktape), as a browser would."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from pypac.parser import PACFile
from support import agent_config, start_twistd, wait_connected


def fetch_pac(port: int, host_header: str | None = None) -> tuple[str, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/proxy.pac")
    if host_header:
        request.add_header("Host", host_header)
    with urllib.request.urlopen(request, timeout=5) as r:
        return r.headers["Content-Type"], r.read().decode()


@pytest.fixture(scope="module")
def pac(tunnel) -> PACFile:
    content_type, text = fetch_pac(tunnel.agent.port)
    assert content_type == "application/x-ns-proxy-autoconfig"
    return PACFile(text)


@pytest.mark.parametrize(
    "url", ["https://example.com/", "http://github.com/x", "https://8.8.8.8/", "https://[2001:db8::1]/"]
)
def test_everything_else_goes_through_the_agent(pac, tunnel, url):
    host = url.split("/")[2].strip("[]")
    assert pac.find_proxy_for_url(url, host) == f"PROXY 127.0.0.1:{tunnel.agent.port}"


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:3000/",
        "http://intranet/",
        "http://printer.local/",
        "http://10.1.2.3/",
        "http://192.168.1.1/",
        "http://172.20.0.5:8080/",
        "http://127.0.0.1:9000/",
        "http://[::1]:8000/",
    ],
)
def test_local_names_and_networks_go_direct(pac, url):
    authority = url.split("/")[2]
    host = authority[1 : authority.index("]")] if authority.startswith("[") else authority.split(":")[0]
    assert pac.find_proxy_for_url(url, host) == "DIRECT"


def test_custom_bypass_and_a_widely_listening_agent(certs, tmp_path, tunnel):
    config = agent_config(
        certs,
        tunnel.server.port,
        proxy_host="0.0.0.0",
        pac_bypass=["*.corp.example", "203.0.113.0/24"],
        local_names=["laptop.lan"],
    )
    agent = start_twistd("agent", config, tmp_path)
    try:
        wait_connected(agent)
        _, text = fetch_pac(agent.port, host_header=f"laptop.lan:{agent.port}")
        pac = PACFile(text)
        proxy = f"PROXY laptop.lan:{agent.port}"  # the address the browser used
        assert pac.find_proxy_for_url("https://wiki.corp.example/", "wiki.corp.example") == "DIRECT"
        assert pac.find_proxy_for_url("https://203.0.113.9/", "203.0.113.9") == "DIRECT"
        assert pac.find_proxy_for_url("http://10.1.2.3/", "10.1.2.3") == proxy  # the defaults were replaced
        assert pac.find_proxy_for_url("https://example.com/", "example.com") == proxy
        with pytest.raises(urllib.error.HTTPError) as refused:  # a name not configured: 403
            fetch_pac(agent.port, host_header='x";alert(1);"')
        assert refused.value.code == 403 and b"alert" not in refused.value.read()
    finally:
        assert agent.stop() == 0


@pytest.mark.parametrize("bad", [["10.0.0.0/33"], ["2001:db8::/32"], ['evil"host'], ["a b"]])
def test_bad_bypass_entries_are_refused_at_start(certs, tmp_path, bad):
    import yaml

    from tunnel.taps_agent import Options as AgentOptions

    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(agent_config(certs, 8443, pac_bypass=bad)))
    with pytest.raises(SystemExit, match="'pac_bypass'"):
        AgentOptions().parseOptions(["--config", str(path)])
