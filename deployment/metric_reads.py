"""Reading the server's metrics back from CloudWatch: sleep decides with them, and
`fluidity status` shows the same figures."""

from __future__ import annotations

import datetime

from .settings import Settings


def newest_maximum(cloudwatch, settings: Settings, metric: str, now: float) -> float | None:
    """The largest Maximum of `metric` over the lookback window, or None without data."""
    moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
    start = moment - datetime.timedelta(minutes=settings.lookback_minutes)
    end = moment + datetime.timedelta(minutes=1)  # EndTime is exclusive: include this very minute
    answer = cloudwatch.get_metric_statistics(
        Namespace=settings.namespace,
        MetricName=metric,
        Dimensions=[{"Name": "ServiceName", "Value": settings.service}],
        StartTime=start,
        EndTime=end,
        Period=60,
        Statistics=["Maximum"],
    )
    values = [p["Maximum"] for p in answer.get("Datapoints", []) if "Maximum" in p]
    return max(values) if values else None
