"""The agent's lifecycle end to end without AWS: moto's ECS behind `fluidity control-plane`,
a scheduler thread playing ECS, and a real server on loopback at the "public IP" the
control plane reports. The agent is configured with the lifecycle block only."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from aws import ControlPlaneProc, EcsScheduler
from support import agent_config, curl, server_config, start_twistd, wait_connected, wait_until

API_KEY = "lifecycle-secret-key"


class World:
    """Control plane, ECS scheduler and the server that a task 'is'."""

    def __init__(self, aws, certs, tmp_path, start_delay: float | None = 0.0, plane_env: dict | None = None) -> None:
        self.aws, self.certs, self.tmp_path = aws, certs, tmp_path
        self.server_config = server_config(certs)
        self.service = aws.make_service(desired=0, port=self.server_config["port"])
        self.plane = ControlPlaneProc(
            aws, tmp_path, API_KEY, {"CONTAINER_PORT": str(self.server_config["port"]), **(plane_env or {})}
        )
        self.scheduler = EcsScheduler(aws, self.service, start_delay)
        self.server = None
        self.start_server()

    def start_server(self):
        self.server = start_twistd("server", self.server_config, self.tmp_path, name=f"server-{time.monotonic_ns()}")

    def agent_config(self, **lifecycle) -> dict:
        block = {
            "wake_endpoint": f"{self.plane.url}/wake",
            "kill_endpoint": f"{self.plane.url}/kill",
            "api_key": API_KEY,
            "wake_retry_interval": "0.3s",
            **lifecycle,
        }
        # No server_ip, and a wrong port: the address must come from the control plane.
        return agent_config(self.certs, 1, server_ip="", lifecycle=block, tunnel_wait="3s")

    def close(self) -> None:
        self.scheduler.stop()
        if self.server is not None:
            self.server.stop()
        self.plane.stop()


@pytest.fixture
def world(aws, certs, tmp_path):
    w = World(aws, certs, tmp_path)
    yield w
    w.close()


def health(agent) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.port}/health", timeout=5) as r:
        return json.load(r)


@pytest.mark.processes
def test_agent_wakes_finds_connects_proxies_and_kills_on_exit(world, http_origin, tmp_path):
    assert world.aws.desired_count(world.service) == 0
    agent = start_twistd("agent", world.agent_config(), tmp_path)
    try:
        wait_connected(agent, 20)
        assert world.aws.desired_count(world.service) == 1
        assert health(agent)["server"] == f"127.0.0.1:{world.server_config['port']}"
        result = curl("-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/plain")
        assert result.returncode == 0 and b"http-origin" in result.stdout, result.stderr
    finally:
        assert agent.stop() == 0
    assert world.aws.desired_count(world.service) == 0
    log = agent.log()
    assert "waking the server" in log and "server is running at 127.0.0.1" in log
    assert API_KEY not in log and API_KEY not in world.plane.log()
    agent.assert_no_unhandled_errors()


@pytest.mark.processes
def test_clients_are_held_while_the_server_starts(aws, certs, tmp_path, http_origin):
    world = World(aws, certs, tmp_path, start_delay=2.5)
    try:
        agent = start_twistd("agent", world.agent_config(), tmp_path)
        began = time.monotonic()
        result = curl("-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/plain", timeout=30)
        waited = time.monotonic() - began
        assert result.returncode == 0 and b"http-origin" in result.stdout, result.stderr
        assert waited >= 2.0  # held until the task ran, not refused
        assert "server is starting" in agent.log()
        assert agent.stop() == 0
        agent.assert_no_unhandled_errors()
    finally:
        world.close()


@pytest.mark.processes
def test_a_server_that_does_not_start_in_time_is_a_503_saying_so(aws, certs, tmp_path, http_origin):
    world = World(aws, certs, tmp_path, start_delay=None)  # ECS never places the task
    try:
        agent = start_twistd("agent", world.agent_config(wake_timeout="2s"), tmp_path)
        result = curl(
            "-i", "-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/plain", timeout=30
        )
        head = result.stdout.decode(errors="replace")
        assert head.startswith("HTTP/1.1 503"), head
        assert "still starting" in head or "not running after 2s" in head, head
        assert "starting" in head and "for " in head
        assert health(agent)["connected"] is False
        assert agent.stop() == 0
        assert world.aws.desired_count(world.service) == 0  # killed on exit
        agent.assert_no_unhandled_errors()
    finally:
        world.close()


@pytest.mark.processes
def test_a_slept_server_is_woken_again_by_the_next_client(world, http_origin, tmp_path):
    agent = start_twistd("agent", world.agent_config(), tmp_path)
    try:
        wait_connected(agent, 20)
        # The sleep Lambda stops the idle service: desiredCount 0, the task (our server) goes.
        world.aws.client("ecs").update_service(cluster="fluidity", service="fluidity-server", desiredCount=0)
        wait_until(lambda: not world.aws.service_tasks(world.service), 5)
        assert world.server.stop() == 0
        wait_until(lambda: "the next local client will wake it" in agent.log(), 10)
        time.sleep(1.5)
        assert world.aws.desired_count(world.service) == 0  # an idle agent does not wake it
        world.start_server()
        result = curl("-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/plain", timeout=30)
        assert result.returncode == 0 and b"http-origin" in result.stdout, result.stderr
        assert world.aws.desired_count(world.service) == 1
    finally:
        assert agent.stop() == 0
    agent.assert_no_unhandled_errors()


@pytest.mark.processes
def test_a_wrong_api_key_is_a_clear_503(world, http_origin, tmp_path):
    config = world.agent_config(api_key="not-the-key")
    agent = start_twistd("agent", config, tmp_path)
    try:
        result = curl(
            "-i", "-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/plain", timeout=30
        )
        head = result.stdout.decode(errors="replace")
        assert head.startswith("HTTP/1.1 503") and "refused the API key (403)" in head, head
        assert world.aws.desired_count(world.service) == 0
    finally:
        assert agent.stop() == 0
    assert "not-the-key" not in agent.log()
    agent.assert_no_unhandled_errors()


@pytest.mark.processes
def test_a_spent_budget_is_a_503_saying_so_and_the_agent_stops_asking(aws, certs, http_origin, tmp_path):
    """Issue 43: wake refuses (402, with the reason) past monthlyBudget; the agent's clients,
    its status page and its log say why, and it asks again only when a client does."""
    from test_lambdas import put_usage, this_months_minutes

    now = time.time()
    put_usage(aws, this_months_minutes(now, 30) or [now])
    budget = {"MONTHLY_BUDGET": "1", "BUDGET_TASK_HOUR": "600", "BUDGET_GB_SENT": "0.09", "BUDGET_FIXED": "0.24"}
    world = World(aws, certs, tmp_path, plane_env=budget)
    agent = None
    try:
        agent = start_twistd("agent", world.agent_config(), tmp_path)
        result = curl(
            "-i", "-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/plain", timeout=30
        )
        head = result.stdout.decode(errors="replace")
        assert head.startswith("HTTP/1.1 503") and "answered 402: the monthly budget of $1.00 is spent" in head, head
        assert "until the budget is raised" in head
        assert "the monthly budget of $1.00 is spent" in (health(agent)["last_error"] or "")
        assert "the monthly budget of $1.00 is spent" in agent.log()
        assert world.aws.desired_count(world.service) == 0
        time.sleep(3)  # reconnection backoff is well under this: the agent must not wake again on its own
        refused = world.plane.log().count("POST /wake from 127.0.0.1 -> 402")
        assert refused == 1, world.plane.log()[-3000:]
    finally:
        if agent is not None:
            assert agent.stop() == 0
        world.close()
    agent.assert_no_unhandled_errors()


# -- the lifecycle block is checked before anything listens ----------------------------------


def _agent_options(certs, tmp_path, **overrides):
    import yaml

    from tunnel.taps_agent import Options as AgentOptions

    config = agent_config(certs, 8443, **overrides)
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    options = AgentOptions()
    options.parseOptions(["--config", str(path)])
    return options


@pytest.mark.parametrize(
    "lifecycle, message",
    [
        ({"wake_endpoint": "https://api.example/prod/wake"}, "'lifecycle.api_key' is required"),
        (
            {"wake_endpoint": "http://api.example/prod/wake", "api_key": "k"},
            "plain http would send the API key in clear",
        ),
        ({"wake_endpoint": "ftp://api.example/wake", "api_key": "k"}, "expected an http(s) URL"),
        ({"wake_endpoint": "https://[api.example/wake", "api_key": "k"}, "bad URL"),
        ({"wake_endpoint": "https://api.example:99999/wake", "api_key": "k"}, "bad URL"),
        ({"wake_endpoint": "https://k:secret@api.example/wake", "api_key": "k"}, "not in the URL"),
        (
            {"wake_endpoint": "https://api.example/prod/start", "api_key": "k"},
            "'lifecycle.status_endpoint' is required",
        ),
        ({"kill_endpoint": "https://api.example/prod/kill", "api_key": "k"}, "'lifecycle.wake_endpoint' is required"),
        (
            {"wake_endpoint": "https://api.example/prod/wake", "api_key": "env:FLUIDITY_TEST_NO_SUCH_VAR"},
            "FLUIDITY_TEST_NO_SUCH_VAR is not set",
        ),
        (
            {"wake_endpoint": "https://api.example/prod/wake", "api_key": "k", "kill_on_exit": True},
            "needs 'lifecycle.kill_endpoint'",
        ),
        ({"wake_endpoint": "https://api.example/prod/wake", "api_key": "k", "wake_timeout": "0s"}, "wake_timeout"),
    ],
)
def test_bad_lifecycle_blocks_are_one_clear_line(certs, tmp_path, lifecycle, message):
    with pytest.raises(SystemExit) as raised:
        _agent_options(certs, tmp_path, server_ip="", lifecycle=lifecycle)
    assert str(raised.value).startswith("fluidity-agent: ") and message in str(raised.value)


def test_lifecycle_settings_are_derived(certs, tmp_path, monkeypatch):
    from tunnel.agent.lifecycle import settings_from

    monkeypatch.setenv("FLUIDITY_TEST_KEY", "from-env")
    block = {
        "wake_endpoint": "https://abc.execute-api.eu-west-1.amazonaws.com/prod/wake",
        "kill_endpoint": "https://abc.execute-api.eu-west-1.amazonaws.com/prod/kill",
        "api_key": "env:FLUIDITY_TEST_KEY",
    }
    settings = settings_from(_agent_options(certs, tmp_path, server_ip="", lifecycle=block).config)
    assert settings.status_url == "https://abc.execute-api.eu-west-1.amazonaws.com/prod/status"
    assert settings.api_key == "from-env" and settings.kill_on_exit is True
    block["kill_on_exit"] = False
    assert settings_from(_agent_options(certs, tmp_path, server_ip="", lifecycle=block).config).kill_on_exit is False
    with pytest.raises(SystemExit, match="'server_ip' is required"):
        _agent_options(certs, tmp_path, server_ip="")


@pytest.mark.processes
def test_the_control_plane_going_away_does_not_touch_the_tunnel(world, http_origin, tmp_path):
    agent = start_twistd("agent", world.agent_config(kill_on_exit=False), tmp_path)
    try:
        wait_connected(agent, 20)
        world.plane.stop()  # API Gateway / the Lambdas are down from here on
        for n in range(5):
            result = curl("-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/n{n}")
            assert result.returncode == 0 and f"/n{n}".encode() in result.stdout
        assert health(agent)["connected"] is True
    finally:
        assert agent.stop() == 0
    agent.assert_no_unhandled_errors()


def test_quiet_pool_falls_back_to_twisteds_own_when_it_changed(monkeypatch):
    """The pool's factory class is private to Twisted: without it the pool is used as it is."""
    from twisted.internet import reactor
    from twisted.web import client

    from tunnel.agent.lifecycle import _quiet_pool

    assert _quiet_pool(reactor)._factory.noisy is False
    monkeypatch.delattr(client.HTTPConnectionPool, "_factory")
    assert isinstance(_quiet_pool(reactor), client.HTTPConnectionPool)


class SlowStatus:
    """In front of the control plane: GET /status answers `delay` seconds late; counts them."""

    def __init__(self, upstream: str, delay: float) -> None:
        import http.server
        import threading

        front = self
        self.pending = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                if self.command == "GET":
                    front.pending += 1
                    time.sleep(delay)
                request = urllib.request.Request(
                    upstream + self.path,
                    method=self.command,
                    headers={"x-api-key": self.headers.get("x-api-key", "")},
                    data=b"" if self.command == "POST" else None,
                )
                try:
                    with urllib.request.urlopen(request, timeout=10) as answer:
                        status, body = answer.status, answer.read()
                except urllib.error.HTTPError as e:
                    status, body = e.code, e.read()
                if self.command == "GET":
                    front.pending -= 1
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.processes
def test_a_client_arriving_while_the_agent_learns_the_server_stopped_wakes_it(world, http_origin, tmp_path):
    """Found by the cloud rehearsal: the tunnel drops, the agent asks for the status, and a
    client arrives before the answer ("stopped"). That client must wake the server, not wait
    for wake_timeout and get a 503."""

    front = SlowStatus(world.plane.url, delay=2.0)
    agent = start_twistd(
        "agent",
        world.agent_config(
            status_endpoint=f"{front.url}/status",
            wake_endpoint=f"{front.url}/wake",
            kill_endpoint=f"{front.url}/kill",
            wake_timeout="20s",
        ),
        tmp_path,
    )
    try:
        wait_connected(agent, 20)
        world.aws.client("ecs").update_service(cluster="fluidity", service="fluidity-server", desiredCount=0)
        wait_until(lambda: not world.aws.service_tasks(world.service), 5)
        world.server.process.kill()  # gone without a goodbye, like a task that was stopped
        world.server.process.wait(5)
        wait_until(lambda: front.pending > 0, 10)  # the agent is asking where the server went
        world.start_server()
        result = curl("-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/plain", timeout=30)
        assert result.returncode == 0 and b"http-origin" in result.stdout, result.stderr + agent.log().encode()[-2000:]
        assert world.aws.desired_count(world.service) == 1
    finally:
        assert agent.stop() == 0
        front.close()
    agent.assert_no_unhandled_errors()


@pytest.mark.processes
@pytest.mark.parametrize(
    "given_as, plane_host",
    [("upstream_proxy", "localhost"), ("$HTTPS_PROXY", "127.0.0.1"), ("$HTTPS_PROXY", "localhost")],
)
def test_the_tunnel_takes_the_proxy_and_a_loopback_control_plane_never_does(world, tmp_path, given_as, plane_host):
    """Issue 25, item 2: the tunnel goes through the proxy (real tinyproxy, Basic auth), by
    the server's name first. Issue 39, item 3: a control plane on this machine (plain
    http://, allowed only because loopback never leaves it) is called directly, never
    through the proxy, whether the proxy is configured or comes from $HTTPS_PROXY: its
    wake, status, kill and x-api-key stay on the machine. (Through a proxy by name, the
    firewall lab's `api.lab.test` over https.)"""
    import shutil
    import subprocess

    from support import free_port, wait_for_port

    binary = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
    assert shutil.which(binary), "tinyproxy is needed (apt-get install tinyproxy; .ci/run installs it)"
    port = free_port()
    conf = tmp_path / "tinyproxy.conf"
    conf.write_text(
        f"Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 32\nAllow 127.0.0.1\nBasicAuth corp pw-1\nLogLevel "
        f"Info\n"
    )
    proxy_log = tmp_path / "tinyproxy.log"
    with open(proxy_log, "wb") as out:
        proxy = subprocess.Popen([binary, "-d", "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process=proxy)
        plane = world.plane.url.replace("127.0.0.1", plane_host)
        config = world.agent_config(wake_endpoint=f"{plane}/wake", kill_endpoint=f"{plane}/kill")
        env = {}
        if given_as == "upstream_proxy":
            config["upstream_proxy"] = f"http://corp:pw-1@127.0.0.1:{port}"
        else:
            env = {"HTTPS_PROXY": f"http://corp:pw-1@127.0.0.1:{port}", "HTTP_PROXY": f"http://127.0.0.1:{port}"}
        agent = start_twistd("agent", config, tmp_path, env=env)
        try:
            wait_connected(agent, 20)
            # the tunnel went through the proxy: by the server's DNS name first, which
            # tinyproxy cannot resolve here, then by its address
            seen = proxy_log.read_text()
            assert (
                f"ip-127-0-0-1.ec2.internal:{world.server_config['port']}" in seen
                and f"127.0.0.1:{world.server_config['port']}" in seen
            ), seen
        finally:
            assert agent.stop() == 0
        assert world.aws.desired_count(world.service) == 0  # the kill arrived, directly
        plane_port = world.plane.url.rsplit(":", 1)[1]
        seen = proxy_log.read_text()
        for host in ("localhost", "127.0.0.1", "[::1]"):
            assert f"{host}:{plane_port}" not in seen, seen
        assert "POST /wake from 127.0.0.1 -> 200" in world.plane.log()
        assert "pw-1" not in agent.log() and API_KEY not in seen
        agent.assert_no_unhandled_errors()
    finally:
        proxy.terminate()
        proxy.wait(10)


@pytest.mark.processes
def test_behind_a_proxy_that_refuses_raw_addresses_the_agent_dials_the_servers_dns_name(world, http_origin, tmp_path):
    """Issue 25, item 6: the control plane reports the task's public DNS name beside its IP
    (moto names 127.0.0.1 `ip-127-0-0-1.ec2.internal`, as a VPC with DNS host names does),
    and the agent asks the proxy for that name; a real squid refuses CONNECTs to bare IPs
    and resolves names from its own hosts file (the laptop resolves nothing itself)."""
    from squid import Squid

    name = "ip-127-0-0-1.ec2.internal"
    plane_port = int(world.plane.url.rsplit(":", 1)[1])
    squid = Squid(
        (),
        {},
        ssl_ports=(world.server_config["port"], plane_port),
        hosts={name: "127.0.0.1", "localhost": "127.0.0.1"},
        refuse_raw_ips=True,
    )
    try:
        named = world.plane.url.replace("127.0.0.1", "localhost")
        config = world.agent_config(wake_endpoint=f"{named}/wake", kill_endpoint=f"{named}/kill")
        config["upstream_proxy"] = f"http://127.0.0.1:{squid.port}"
        agent = start_twistd("agent", config, tmp_path)
        try:
            wait_connected(agent, 30)
            assert health(agent)["server_dns_name"] == name
            result = curl("-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/plain")
            assert result.returncode == 0 and b"http-origin" in result.stdout, result.stderr
        finally:
            assert agent.stop() == 0
        seen = squid.access_log()
        assert f"CONNECT {name}:{world.server_config['port']}" in seen, seen
        assert "TCP_DENIED" not in seen, seen  # nothing was asked by bare address
        assert f"server is running at 127.0.0.1:{world.server_config['port']} ({name})" in agent.log()
        agent.assert_no_unhandled_errors()
    finally:
        squid.stop()


@pytest.mark.processes
def test_a_raw_ip_refusing_proxy_refuses_what_the_agent_would_dial_without_a_name(tmp_path):
    """The lab's filter is real: squid refuses CONNECT to a bare address (so the test above
    proves the name was used, not that this squid lets anything through)."""
    import socket

    from squid import Squid

    squid = Squid((), {}, ssl_ports=(9,), refuse_raw_ips=True)
    try:
        with socket.create_connection(("127.0.0.1", squid.port), timeout=10) as s:
            s.sendall(b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 403"), "squid let a bare address through"
    finally:
        squid.stop()


@pytest.mark.processes
def test_behind_the_stacks_load_balancer_the_agent_dials_its_name_not_a_tasks_address(
    aws, certs, tmp_path, http_origin
):
    """Issue 29: with stableEndpoint nlb the control plane reports the load balancer's DNS
    name (`endpoint`) beside the task's address; the agent dials the name, which stays the
    same whichever task answers ("localhost" stands in for it here)."""
    world = World(aws, certs, tmp_path)
    world.plane.stop()
    world.plane = ControlPlaneProc(
        aws,
        tmp_path,
        API_KEY,
        {"CONTAINER_PORT": str(world.server_config["port"]), "STABLE_ENDPOINT": "localhost"},
    )
    try:
        agent = start_twistd("agent", world.agent_config(), tmp_path)
        try:
            wait_connected(agent, 20)
            assert health(agent)["server"] == f"localhost:{world.server_config['port']}"
            result = curl("-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/plain")
            assert result.returncode == 0 and b"http-origin" in result.stdout, result.stderr
        finally:
            assert agent.stop() == 0
        assert f"server is running at localhost:{world.server_config['port']}" in agent.log()
        agent.assert_no_unhandled_errors()
    finally:
        world.close()


@pytest.mark.processes
@pytest.mark.parametrize("form", ["file:PATH", "keyring", "env:VAR"])
def test_the_api_key_from_a_file_the_keyring_or_the_environment_wakes_the_server(world, tmp_path, form):
    """Issue 39, item 3: `api_key: file:PATH`, `keyring` (the entry fluidity-control-plane /
    the wake endpoint's host, stored with the keyring package's own command; its file
    backend here) or `env:VAR`: the agent wakes the server with it, and the key is nowhere
    in its log; `fluidity doctor` reads it the same way."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from test_doctor import doctor

    env = {"PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring", "XDG_DATA_HOME": str(tmp_path / "data")}
    if form == "file:PATH":
        (tmp_path / "api-key").write_text(API_KEY + "\n")
        spec = f"file:{tmp_path / 'api-key'}"
    elif form == "keyring":
        stored = subprocess.run(
            [str(Path(sys.executable).with_name("keyring")), "set", "fluidity-control-plane", "127.0.0.1"],
            input=API_KEY + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
        )
        assert stored.returncode == 0, stored
        spec = "keyring"
    else:
        env["PLANE_KEY"] = API_KEY
        spec = "env:PLANE_KEY"
    config = world.agent_config(api_key=spec)
    agent = start_twistd("agent", config, tmp_path, env=env)
    try:
        wait_connected(agent, 20)
        assert world.aws.desired_count(world.service) == 1
    finally:
        assert agent.stop() == 0
    assert "POST /wake from 127.0.0.1 -> 200" in world.plane.log()
    assert API_KEY not in agent.log()
    agent.assert_no_unhandled_errors()
    _code, out = doctor(config, tmp_path, env=env)
    assert "ok    control plane:" in out and API_KEY not in out, out


@pytest.mark.processes
def test_an_api_key_that_cannot_be_had_is_one_line_at_start(world, tmp_path):
    import os
    import subprocess

    from support import TWISTD

    for spec, message in (
        (f"file:{tmp_path / 'missing'}", f"'lifecycle.api_key': cannot read {tmp_path / 'missing'}"),
        (
            "keyring",
            "'lifecycle.api_key: keyring': no API key for 127.0.0.1 in the system's credential store; store "
            "one with: keyring set fluidity-control-plane 127.0.0.1",
        ),
    ):
        path = tmp_path / "agent.yaml"
        path.write_text(json.dumps(world.agent_config(api_key=spec)))
        done = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "fluidity-agent", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            env={
                **os.environ,
                "PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring",
                "XDG_DATA_HOME": str(tmp_path / "empty"),
            },
        )
        assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr, done
