"""CloudWatch metrics from the server, published off the reactor thread.

Every `metrics_interval` (and once more on a clean stop) the server publishes
`ActiveConnections` (agents connected now), `LastActivityEpochSeconds` and
`BytesSentToAgents` (payload sent to agents since the last publication that got through,
so a month's Sum is the month's data transfer out) under one dimension `ServiceName`,
which is what the sleep Lambda and the seed's `aws cloudwatch get-metric-statistics`
queries read. The sample is taken on the reactor thread (it reads live state); boto3
runs in the reactor's thread pool, bounded by short timeouts, so a slow or absent
CloudWatch never touches the tunnel. Failures are logged once per streak; the next tick
simply tries again.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any, Protocol

from twisted.application import service
from twisted.internet import defer, threads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from deployment.metric_names import ACTIVE_CONNECTIONS, BYTES_SENT, LAST_ACTIVITY

log = Logger(namespace="fluidity.metrics")

FINAL_PUBLISH_TIMEOUT = 5.0


def cloudwatch_client(timeout: float):
    """A CloudWatch client with timeouts shorter than the interval; region and endpoint
    come from the usual AWS environment (AWS_REGION, AWS_ENDPOINT_URL, the task role)."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 2, "mode": "standard"})
    return boto3.session.Session().client("cloudwatch", config=config)


MAX_AGENT_SERIES = 100  # per publication: PutMetricData takes 1000 data points


class Unsent:
    """Bytes sent to agents and not yet in a publication that got through: each one is
    published once, a failed publication's in the next."""

    def __init__(self) -> None:
        self.reported = 0

    def since_reported(self, total: int) -> int:
        return max(0, total - self.reported)

    def confirm(self, total: int) -> None:
        self.reported = max(self.reported, total)


def metric_data(
    service_name: str,
    agents: int,
    last_activity: float,
    now: float,
    by_agent: dict[str, int] | None = None,
    sent: int = 0,
) -> list[dict]:
    """The three data points in PutMetricData's shape, plus ActiveConnections per agent
    (dimensions ServiceName and Agent, the certificate CN) when agents are connected."""
    dimensions = [{"Name": "ServiceName", "Value": service_name}]
    timestamp = datetime.datetime.fromtimestamp(now, datetime.UTC)
    data = [
        {
            "MetricName": ACTIVE_CONNECTIONS,
            "Dimensions": dimensions,
            "Timestamp": timestamp,
            "Value": float(agents),
            "Unit": "Count",
        },
        {
            "MetricName": LAST_ACTIVITY,
            "Dimensions": dimensions,
            "Timestamp": timestamp,
            "Value": float(int(last_activity)),
            "Unit": "Seconds",
        },
        {
            "MetricName": BYTES_SENT,
            "Dimensions": dimensions,
            "Timestamp": timestamp,
            "Value": float(sent),
            "Unit": "Bytes",
        },
    ]
    for agent, count in sorted((by_agent or {}).items())[:MAX_AGENT_SERIES]:
        per_agent = [*dimensions, {"Name": "Agent", "Value": agent[:255] or "?"}]
        data.append(
            {
                "MetricName": ACTIVE_CONNECTIONS,
                "Dimensions": per_agent,
                "Timestamp": timestamp,
                "Value": float(count),
                "Unit": "Count",
            }
        )
    return data


class MetricsPublisher:
    """Samples the server on the reactor thread and hands the boto3 call to a thread."""

    def __init__(
        self,
        reactor,
        server,
        namespace: str,
        service_name: str,
        interval: float,
        client_factory: Callable = cloudwatch_client,
        per_agent: bool = False,
    ) -> None:
        self.reactor = reactor
        self.per_agent = per_agent  # one more series per agent identity: each is a monthly charge
        self.server = server
        self.namespace = namespace
        self.service_name = service_name
        self.timeout = max(1.0, min(5.0, interval))
        self._client_factory = client_factory
        self._client: Any = None
        self.failures = 0  # length of the current failure streak
        self.published = 0
        self.unsent = Unsent()

    def sample(self, sent_total: int) -> list[dict]:
        by_agent = self.server.agents_by_identity() if self.per_agent else None
        return metric_data(
            self.service_name,
            self.server.agents,
            self.server.activity,
            self.reactor.seconds(),
            by_agent,
            self.unsent.since_reported(sent_total),
        )

    def publish(self) -> defer.Deferred:
        """One publication; never fails (the error is logged), so a LoopingCall keeps going."""
        total = self.server.bytes_sent_to_agents
        data = self.sample(total)
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self._put, data)
        d.addCallback(lambda _: self.unsent.confirm(total))
        d.addCallbacks(self._sent, self._failed)
        return d

    def _put(self, data: list[dict]) -> None:  # runs in a pool thread
        if self._client is None:
            self._client = self._client_factory(self.timeout)
        self._client.put_metric_data(Namespace=self.namespace, MetricData=data)

    def _sent(self, _) -> None:
        if self.failures:
            log.info("CloudWatch metrics are being published again after {n} failed attempt(s)", n=self.failures)
        self.failures = 0
        self.published += 1

    def _failed(self, failure) -> None:
        self.failures += 1
        if self.failures == 1:
            log.warn(
                "could not publish CloudWatch metrics ({error}); the tunnel is unaffected, retrying every interval",
                error=_describe(failure.value),
            )


def _describe(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


class Publisher(Protocol):
    """What MetricsService needs of a publisher: CloudWatch's API (MetricsPublisher) or
    EMF lines on stdout (emf.EmfPublisher)."""

    reactor: Any
    namespace: str
    service_name: str

    def publish(self) -> defer.Deferred: ...


class MetricsService(service.Service):
    """Publishes every interval while running, and once more, bounded in time, on stop.

    A LoopingCall of its own rather than TimerService: on stop, TimerService waits for a
    publication still in flight, and the final one must not wait behind a slow CloudWatch."""

    def __init__(self, publisher: Publisher, interval: float) -> None:
        self.publisher = publisher
        self.step = interval
        self.loop = LoopingCall(publisher.publish)
        self.loop.clock = publisher.reactor

    def startService(self) -> None:
        super().startService()
        log.info(
            "publishing CloudWatch metrics to namespace {ns} as ServiceName={name} every {interval}s",
            ns=self.publisher.namespace,
            name=self.publisher.service_name,
            interval=self.step,
        )
        self.loop.start(self.step, now=True).addErrback(lambda f: log.failure("metrics loop stopped", f))

    def stopService(self):
        """Stop ticking and publish the final state at once; a publication still in flight
        is not waited for, and the final one is cut off after a few seconds."""
        if self.loop.running:
            self.loop.stop()
        super().stopService()
        final = self.publisher.publish()
        final.addTimeout(FINAL_PUBLISH_TIMEOUT, self.publisher.reactor, onTimeoutCancel=lambda *_: None)
        return final
