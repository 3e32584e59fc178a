"""The server publishes ActiveConnections and LastActivityEpochSeconds to CloudWatch
(moto's server), in the shape the sleep Lambda and the seed's CLI queries read, and a
CloudWatch that never answers changes nothing for the tunnel."""

from __future__ import annotations

import datetime
import socket
import time

import pytest
from support import agent_config, curl, server_config, start_twistd, wait_connected, wait_until

DIMENSIONS = [{"Name": "ServiceName", "Value": "fluidity-server"}]
METRICS = {
    "metrics": {
        "emit_metrics": True,
        "metrics_interval": "1s",
        "namespace": "Fluidity",
        "service_name": "fluidity-server",
    }
}
QUIET = {"keepalive_interval": "300s"}  # no PINGs: only real traffic counts as activity here


def statistics(aws, metric: str, since: float, statistic: str = "Maximum") -> list[float]:
    """`aws cloudwatch get-metric-statistics --namespace Fluidity --metric-name M
    --dimensions Name=ServiceName,Value=fluidity-server --statistics S`, from `since`."""
    utc = datetime.UTC
    points = aws.client("cloudwatch").get_metric_statistics(
        Namespace="Fluidity",
        MetricName=metric,
        Dimensions=DIMENSIONS,
        StartTime=datetime.datetime.fromtimestamp(since, utc),
        EndTime=datetime.datetime.fromtimestamp(time.time() + 60, utc),
        Period=60,
        Statistics=[statistic],
    )["Datapoints"]
    return [p[statistic] for p in points]


def maxima(aws, metric: str, since: float) -> list[float]:
    return statistics(aws, metric, since)


@pytest.mark.processes
def test_metrics_follow_agents_and_traffic(aws, certs, http_origin, tmp_path):
    server = start_twistd("server", server_config(certs, **METRICS, **QUIET), tmp_path, env=aws.env)
    agent = None
    try:
        started = time.time()
        assert wait_until(lambda: maxima(aws, "ActiveConnections", started) == [0.0], 10)

        agent = start_twistd("agent", agent_config(certs, server.port, **QUIET), tmp_path, env=aws.env)
        wait_connected(agent)
        connected = time.time()
        assert wait_until(lambda: maxima(aws, "ActiveConnections", connected) == [1.0], 10)

        # Without traffic the reported activity stays put across ticks ...
        time.sleep(1.5)
        quiet_since = time.time()
        wait_until(lambda: len(maxima(aws, "LastActivityEpochSeconds", quiet_since)) > 0, 10)
        time.sleep(2.2)
        before = max(maxima(aws, "LastActivityEpochSeconds", connected))
        assert maxima(aws, "LastActivityEpochSeconds", quiet_since) == [before]
        # ... and moves when bytes flow.
        result = curl("-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/bytes/1000")
        assert result.returncode == 0, result.stderr
        moved = wait_until(lambda: max(maxima(aws, "LastActivityEpochSeconds", connected)) > before, 10)
        assert moved
        assert max(maxima(aws, "LastActivityEpochSeconds", connected)) >= int(quiet_since)

        assert agent.stop() == 0
        left = time.time() + 1
        assert wait_until(lambda: maxima(aws, "ActiveConnections", left) == [0.0], 10)
    finally:
        if agent is not None:
            agent.stop()
        assert server.stop() == 0
    log = server.log()
    assert "publishing CloudWatch metrics to namespace Fluidity as ServiceName=fluidity-server" in log
    assert "could not publish" not in log
    server.assert_no_unhandled_errors()


def sums(aws, metric: str, since: float) -> float:
    """The Sum of `metric` from `since`, over every data point moto holds."""
    return sum(statistics(aws, metric, since, "Sum"))


@pytest.mark.processes
def test_bytes_sent_to_agents_add_up_to_what_clients_downloaded_once(aws, certs, http_origin, tmp_path):
    """Issue 43: BytesSentToAgents is summed per interval, so a month's Sum is its data
    transfer out: two downloads count once each, also across the agent's reconnection."""
    started = time.time() - 1
    server = start_twistd("server", server_config(certs, **METRICS, **QUIET), tmp_path, env=aws.env)
    agent = None
    try:
        for _ in range(2):  # the second download through a new agent connection: gone ones still count
            agent = start_twistd("agent", agent_config(certs, server.port, **QUIET), tmp_path, env=aws.env)
            wait_connected(agent)
            result = curl("-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/bytes/100000")
            assert result.returncode == 0 and len(result.stdout) == 100000, result.stderr
            assert agent.stop() == 0
        assert wait_until(lambda: sums(aws, "BytesSentToAgents", started) >= 200000, 10)
        time.sleep(2.5)  # more ticks with nothing new to send
        total = sums(aws, "BytesSentToAgents", started)
        assert 200000 <= total <= 200000 + 2 * 1000, total  # the payload and the origin's response headers
    finally:
        if agent is not None:
            agent.stop()
        assert server.stop() == 0
    server.assert_no_unhandled_errors()


@pytest.mark.processes
def test_a_final_publication_on_clean_stop(aws, certs, tmp_path):
    slow = {"metrics": {**METRICS["metrics"], "metrics_interval": "5m"}}
    started = time.time()  # before the start: the first tick may be stamped before the port is up
    server = start_twistd("server", server_config(certs, **slow), tmp_path, env=aws.env)
    assert wait_until(lambda: maxima(aws, "ActiveConnections", started) == [0.0], 10)  # the first tick
    time.sleep(1.1)
    stopping = time.time()
    assert maxima(aws, "ActiveConnections", stopping) == []
    assert server.stop() == 0
    assert maxima(aws, "ActiveConnections", stopping) == [0.0]
    server.assert_no_unhandled_errors()


@pytest.mark.processes
def test_a_silent_cloudwatch_never_touches_the_tunnel(aws, certs, http_origin, tmp_path):
    # A listener that accepts connections and never answers: every PutMetricData times out.
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    env = {**aws.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{hole.getsockname()[1]}"}
    server = start_twistd("server", server_config(certs, **METRICS), tmp_path, env=env)
    agent = start_twistd("agent", agent_config(certs, server.port), tmp_path)
    try:
        wait_connected(agent)
        deadline = time.monotonic() + 6
        fetched = 0
        while time.monotonic() < deadline:
            result = curl(
                "-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/bytes/100000", timeout=5
            )
            assert result.returncode == 0 and len(result.stdout) == 100000, result.stderr
            fetched += 1
            time.sleep(0.2)
        assert fetched >= 10
        wait_until(lambda: "could not publish CloudWatch metrics" in server.log(), 10)
        assert agent.stop() == 0
        stopping = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - stopping < 10  # the last publication is cut short
    finally:
        agent.stop()
        server.stop()
        hole.close()
    log = server.log()
    assert log.count("could not publish CloudWatch metrics") == 1, log  # once per failure streak
    server.assert_no_unhandled_errors()


def test_bad_metrics_settings_are_one_clear_line(certs, tmp_path):
    import pytest
    import yaml

    from tunnel.taps_server import Options as ServerOptions

    for metrics, message in (
        ({"emit_metrics": True, "metrics_interval": "0.5s"}, "at least 1s"),
        ({"emit_metrics": True, "namespace": "AWS/ECS"}, "not start with AWS/"),
        ({"emit_metrics": True, "service_name": ""}, "must not be empty"),
        ({"emit_metrics": "sometimes"}, "expected true or false"),
        ({"metrics_interval": "soon"}, "expected a duration"),
    ):
        path = tmp_path / "server.yaml"
        path.write_text(yaml.safe_dump(server_config(certs, metrics=metrics)))
        with pytest.raises(SystemExit) as raised:
            ServerOptions().parseOptions(["--config", str(path)])
        assert str(raised.value).startswith("fluidity-server: ") and message in str(raised.value), raised.value
    path.write_text(yaml.safe_dump(server_config(certs, metrics={"emit_metrics": False, "metrics_interval": "0.5s"})))
    ServerOptions().parseOptions(["--config", str(path)])  # off: the interval does not matter
