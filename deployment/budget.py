"""The month so far against the stack's `monthlyBudget`, from what the server already
records: its metrics are published once a `METRICS_INTERVAL` by every running task, so
the month's count of `ActiveConnections` data points is the task-time that ran, and the
month's sum of `BytesSentToAgents` is what it sent. The stack turns its prices into three
figures (a task-hour, a GB sent, the month's fixed lines; `tunnel/ops/costs.py`), at list
price before free tiers and Spot's discount, so the estimate errs on the dear side.

Months are calendar months in UTC, as AWS bills them: a budget spent holds the server
stopped until the next one begins, or until the budget is raised.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from .metric_names import ACTIVE_CONNECTIONS, BYTES_SENT

METRICS_INTERVAL = 60.0  # seconds between the server's publications (configs/server.yaml)
GB = 2**30  # AWS bills data transfer by the binary gigabyte
DAY = 86400


@dataclass(frozen=True)
class Budget:
    limit: float  # dollars a month
    task_hour: float  # a task running an hour, with its public IPv4 address
    gb_sent: float  # a GB sent to agents (data transfer out)
    fixed: float  # the month's lines billed whether the server runs or not


def month_start(now: float) -> datetime.datetime:
    moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(now: float) -> datetime.datetime:
    start = month_start(now)
    return (start + datetime.timedelta(days=32)).replace(day=1)


def _statistic(cloudwatch, namespace: str, service: str, metric: str, statistic: str, now: float) -> float:
    """`statistic` of `metric` over the month so far, in daily periods (at most 31 points)."""
    answer = cloudwatch.get_metric_statistics(
        Namespace=namespace,
        MetricName=metric,
        Dimensions=[{"Name": "ServiceName", "Value": service}],
        StartTime=month_start(now),
        EndTime=datetime.datetime.fromtimestamp(now + 60, datetime.UTC),
        Period=DAY,
        Statistics=[statistic],
    )
    return float(sum(point.get(statistic, 0.0) for point in answer.get("Datapoints", [])))


def month_so_far(cloudwatch, namespace: str, service: str, budget: Budget, now: float) -> dict:
    """The month's figures and whether they reach the budget, as wake, sleep and
    `fluidity cost --month` show them."""
    samples = _statistic(cloudwatch, namespace, service, ACTIVE_CONNECTIONS, "SampleCount", now)
    sent = _statistic(cloudwatch, namespace, service, BYTES_SENT, "Sum", now)
    hours = samples * METRICS_INTERVAL / 3600
    gb = sent / GB
    cost = hours * budget.task_hour + gb * budget.gb_sent + budget.fixed
    return {
        "month": month_start(now).strftime("%Y-%m"),
        "taskHours": round(hours, 2),
        "gbSent": round(gb, 3),
        "fixed": round(budget.fixed, 2),
        "cost": round(cost, 2),
        "budget": round(budget.limit, 2),
        "spent": cost >= budget.limit,
        "resumes": next_month(now).strftime("%Y-%m-%d"),
    }


def refusal(so_far: dict) -> str:
    """Why the server stays stopped, in words an agent's user reads on a 503."""
    return (
        f"the monthly budget of ${so_far['budget']:.2f} is spent: ${so_far['cost']:.2f} so far in {so_far['month']} "
        f"({so_far['taskHours']:g} task-hours, {so_far['gbSent']:g} GB sent, ${so_far['fixed']:.2f} fixed); the server "
        f"stays stopped until {so_far['resumes']} (UTC) or until the budget is raised (pulumi config set "
        "fluidity:monthlyBudget DOLLARS, then pulumi up)"
    )
