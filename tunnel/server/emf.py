"""The server's metrics as CloudWatch embedded metric format (EMF) log lines.

On Fargate the container's stdout goes to CloudWatch Logs (the awslogs driver), which
turns each EMF line into the same metrics PutMetricData would publish: same namespace,
names, dimensions and values. It costs no API request, needs no
`cloudwatch:PutMetricData` permission and no boto3 in the image. Pure functions: the
publisher writes what `lines()` returns, one JSON object a line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from twisted.internet import defer

from deployment.metric_names import ACTIVE_CONNECTIONS, BYTES_SENT, LAST_ACTIVITY
from tunnel.server.metrics import Unsent

MAX_AGENT_LINES = 100


def lines(
    namespace: str,
    service_name: str,
    agents: int,
    last_activity: float,
    now: float,
    by_agent: dict[str, int] | None = None,
    sent: int = 0,
) -> list[str]:
    """One line with ActiveConnections, LastActivityEpochSeconds and BytesSentToAgents
    (dimension ServiceName), and one per connected agent identity (dimensions ServiceName
    and Agent) when given."""
    stamp = int(now * 1000)
    out = [
        {
            "_aws": {
                "Timestamp": stamp,
                "CloudWatchMetrics": [
                    {
                        "Namespace": namespace,
                        "Dimensions": [["ServiceName"]],
                        "Metrics": [
                            {"Name": ACTIVE_CONNECTIONS, "Unit": "Count"},
                            {"Name": LAST_ACTIVITY, "Unit": "Seconds"},
                            {"Name": BYTES_SENT, "Unit": "Bytes"},
                        ],
                    }
                ],
            },
            "ServiceName": service_name,
            ACTIVE_CONNECTIONS: agents,
            LAST_ACTIVITY: int(last_activity),
            BYTES_SENT: sent,
        }
    ]
    for agent, count in sorted((by_agent or {}).items())[:MAX_AGENT_LINES]:
        out.append(
            {
                "_aws": {
                    "Timestamp": stamp,
                    "CloudWatchMetrics": [
                        {
                            "Namespace": namespace,
                            "Dimensions": [["ServiceName", "Agent"]],
                            "Metrics": [{"Name": ACTIVE_CONNECTIONS, "Unit": "Count"}],
                        }
                    ],
                },
                "ServiceName": service_name,
                "Agent": agent[:255] or "?",
                ACTIVE_CONNECTIONS: count,
            }
        )
    return [json.dumps(record, separators=(",", ":")) for record in out]


def _write_stdout(text: str) -> None:
    stdout = sys.__stdout__ or sys.stdout  # None only where Python was started without one
    stdout.write(text)
    stdout.flush()


class EmfPublisher:
    """Same shape as `metrics.MetricsPublisher`, writing EMF lines instead of calling AWS."""

    def __init__(
        self,
        reactor,
        server,
        namespace: str,
        service_name: str,
        per_agent: bool = False,
        write: Callable[[str], None] = _write_stdout,
    ) -> None:
        self.reactor = reactor
        self.server = server
        self.namespace = namespace
        self.service_name = service_name
        self.per_agent = per_agent
        self.write = write
        self.failures = 0
        self.published = 0
        self.unsent = Unsent()

    def publish(self) -> defer.Deferred:
        server = self.server
        by_agent = server.agents_by_identity() if self.per_agent else None
        total = server.bytes_sent_to_agents
        sent = self.unsent.since_reported(total)
        text = "".join(
            line + "\n"
            for line in lines(
                self.namespace,
                self.service_name,
                server.agents,
                server.activity,
                self.reactor.seconds(),
                by_agent,
                sent,
            )
        )
        try:
            self.write(text)  # one write: the lines never interleave with the log's
        except (OSError, ValueError):
            self.failures += 1
        else:
            self.unsent.confirm(total)
            self.published += 1
        return defer.succeed(None)
