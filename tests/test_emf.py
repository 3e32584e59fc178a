"""Metrics as embedded-metric-format lines (what the Fargate task publishes): the server
process writes them on stdout, they follow the EMF specification, and the sleep decision
works from the metrics CloudWatch makes of them. moto cannot turn log lines into metrics,
so the test does what CloudWatch Logs does with each line (per the specification) and puts
the result into moto's CloudWatch, then lets the sleep handler decide."""

from __future__ import annotations

import datetime
import json
import time

import pytest
from support import agent_config, server_config, start_twistd, wait_connected, wait_until

from tunnel.server import emf

EMF = {
    "metrics": {
        "emit_metrics": True,
        "metrics_interval": "1s",
        "transport": "emf",
        "namespace": "Fluidity",
        "service_name": "fluidity-server",
    }
}


def emf_records(log: str) -> list[dict]:
    records = []
    for line in log.splitlines():
        start = line.find('{"_aws"')
        if start == 0:
            records.append(json.loads(line))
    return records


def extracted(record: dict) -> list[dict]:
    """What CloudWatch makes of one EMF record: for each metric directive and dimension
    set, a datum whose dimension values and metric values are the record's own keys."""
    meta = record["_aws"]
    stamp = datetime.datetime.fromtimestamp(meta["Timestamp"] / 1000, datetime.UTC)
    data = []
    for directive in meta["CloudWatchMetrics"]:
        for dimension_set in directive["Dimensions"]:
            dimensions = [{"Name": name, "Value": str(record[name])} for name in dimension_set]
            for metric in directive["Metrics"]:
                data.append(
                    {
                        "MetricName": metric["Name"],
                        "Dimensions": dimensions,
                        "Timestamp": stamp,
                        "Value": float(record[metric["Name"]]),
                        "Unit": metric["Unit"],
                    }
                )
    return data


def test_lines_follow_the_specification():
    lines = emf.lines(
        "Fluidity", "fluidity-server", 2, 1_700_000_000.9, 1_700_000_100.25, {"alice": 1, "bob": 1}, 123456
    )
    records = [json.loads(line) for line in lines]
    assert len(records) == 3 and all("\n" not in line for line in lines)
    for record in records:
        meta = record["_aws"]
        assert meta["Timestamp"] == 1_700_000_100_250  # milliseconds, an integer
        for directive in meta["CloudWatchMetrics"]:
            assert directive["Namespace"] == "Fluidity"
            for dimension_set in directive["Dimensions"]:
                assert all(
                    isinstance(record[name], str) for name in dimension_set
                )  # each dimension is a top-level string
            for metric in directive["Metrics"]:
                assert isinstance(record[metric["Name"]], (int, float)) and metric["Unit"] in (
                    "Count",
                    "Seconds",
                    "Bytes",
                )
    assert records[0]["ActiveConnections"] == 2 and records[0]["LastActivityEpochSeconds"] == 1_700_000_000
    assert records[0]["BytesSentToAgents"] == 123456  # sent since the last line: CloudWatch sums them
    assert {m["Name"] for m in records[0]["_aws"]["CloudWatchMetrics"][0]["Metrics"]} == {
        "ActiveConnections",
        "LastActivityEpochSeconds",
        "BytesSentToAgents",
    }
    assert {r.get("Agent") for r in records[1:]} == {"alice", "bob"}


@pytest.mark.processes
def test_the_server_writes_emf_and_sleep_decides_from_it(aws, certs, tmp_path):
    from deployment.settings import from_env
    from lambdas import sleep

    service = aws.make_service(desired=1)
    aws.reconcile(service)
    server = start_twistd("server", server_config(certs, **EMF, log_format="json"), tmp_path)
    agent = None
    try:
        agent = start_twistd("agent", agent_config(certs, server.port), tmp_path)
        wait_connected(agent)
        connected = wait_until(lambda: [r for r in emf_records(server.log()) if r.get("ActiveConnections") == 1], 10)
        for record in connected[-1:]:
            aws.client("cloudwatch").put_metric_data(
                Namespace=record["_aws"]["CloudWatchMetrics"][0]["Namespace"], MetricData=extracted(record)
            )
        # Six minutes on: past the five-minute idle threshold since the start and the last
        # activity, inside the ten-minute lookback. Only the connected agent keeps it up.
        decision = sleep.decide(aws.client("ecs"), aws.client("cloudwatch"), from_env(), time.time() + 6 * 60)
        assert decision["action"] == "none" and "1 agent(s) connected" in decision["reason"], decision
        assert decision["idleSeconds"] > 300
        # Every other line of the log is still one JSON object: EMF lines do not break it.
        for line in server.log().splitlines():
            if line.strip():
                json.loads(line)
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
    server.assert_no_unhandled_errors()


@pytest.mark.processes
def test_without_boto3_the_api_transport_is_refused_at_start(certs, tmp_path):
    """The image has no AWS SDK: asking it for PutMetricData is a one-line error, emf works."""
    import subprocess
    import sys

    import yaml
    from support import TWISTD

    config = tmp_path / "server.yaml"
    config.write_text(yaml.safe_dump(server_config(certs, metrics={"emit_metrics": True, "transport": "api"})))
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\nclass _No:\n    def find_spec(self, name, path=None, target=None):\n        if name == 'boto3' or "
        "name.startswith('boto3.'):\n            raise ImportError('no boto3 here')\nsys.meta_path.insert(0, _No())\n"
    )
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, TWISTD, "-n", "--pidfile=", "fluidity-server", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode != 0
    assert "'metrics.transport' api needs boto3" in done.stderr and len(done.stderr.strip().splitlines()) == 1, (
        done.stderr
    )
