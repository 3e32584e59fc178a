"""Many agents on one server: each known by its certificate's CN in logs, /health and a
per-agent ActiveConnections series; max_connections per server; a per-agent stream limit."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from support import agent_config, curl, proxy_connect, server_config, start_twistd, wait_connected, wait_until
from test_metrics import DIMENSIONS, maxima

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)

LIMITS = {
    "max_connections": 2,
    "max_streams_per_agent": 2,
    "metrics": {"emit_metrics": True, "metrics_interval": "1s", "per_agent": True},
}


def per_agent(aws, agent: str, since: float) -> list[float]:
    points = aws.client("cloudwatch").get_metric_statistics(
        Namespace="Fluidity",
        MetricName="ActiveConnections",
        Dimensions=[*DIMENSIONS, {"Name": "Agent", "Value": agent}],
        StartTime=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)),
        EndTime=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60)),
        Period=60,
        Statistics=["Maximum"],
    )["Datapoints"]
    return [p["Maximum"] for p in points]


def test_two_agents_one_server(aws, certs, http_origin, echo, tmp_path):
    server = start_twistd("server", server_config(certs, **LIMITS), tmp_path, env=aws.env)
    alice_config = agent_config(certs, server.port, cert_file=certs.path("alice.pem"), key_file=certs.path("alice.key"))
    client = start_twistd("agent", agent_config(certs, server.port), tmp_path, name="agent-client")
    alice = start_twistd("agent", alice_config, tmp_path, name="agent-alice")
    held = []
    try:
        assert wait_connected(client)["identity"] == "client"
        assert wait_connected(alice)["identity"] == "alice"
        since = time.time()
        assert wait_until(
            lambda: per_agent(aws, "alice", since) == [1.0] and per_agent(aws, "client", since) == [1.0], 10
        )
        assert wait_until(lambda: maxima(aws, "ActiveConnections", since) == [2.0], 10)
        log = server.log()
        assert "agent client@127.0.0.1 connected" in log and "agent alice@127.0.0.1 connected" in log

        # A third agent is one too many for max_connections 2; the two keep working.
        third = start_twistd("agent", agent_config(certs, server.port, tunnel_wait="1s"), tmp_path, name="agent-third")
        try:
            time.sleep(1.0)
            with urllib.request.urlopen(f"http://127.0.0.1:{third.port}/health", timeout=5) as r:
                assert json.load(r)["connected"] is False
            assert "max_connections (2) reached" in server.log()
        finally:
            assert third.stop() == 0

        # alice may hold two streams; the third is refused with a reason, client is unaffected.
        for _ in range(2):
            sock, head = proxy_connect(alice.port, f"127.0.0.1:{echo.port}")
            held.append(sock)
            assert head.startswith(b"HTTP/1.1 200"), head
        sock, head = proxy_connect(alice.port, f"127.0.0.2:{echo.port}")  # a new destination waits for the server
        held.append(sock)
        assert head.startswith(b"HTTP/1.1 429") and b"max_streams_per_agent" in head, head
        for _ in range(3):
            result = curl("-x", f"http://127.0.0.1:{client.port}", f"http://127.0.0.1:{http_origin.port}/plain")
            assert result.returncode == 0 and b"http-origin" in result.stdout
        for sock in held:
            sock.close()
        held.clear()
        result = wait_until(
            lambda: (
                (
                    r := curl("-x", f"http://127.0.0.1:{alice.port}", f"http://127.0.0.1:{http_origin.port}/plain")
                ).returncode
                == 0
                and r
            ),
            5,
        )
        assert b"http-origin" in result.stdout  # streams freed: alice is served again
    finally:
        for sock in held:
            sock.close()
        assert client.stop() == 0 and alice.stop() == 0
        assert server.stop() == 0
    for proc in (server, client, alice):
        proc.assert_no_unhandled_errors()
