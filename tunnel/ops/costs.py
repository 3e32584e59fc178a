"""`fluidity cost`: what a month of the stack costs, line by line, for a given use.

Reads the stack's settings the way the Pulumi program does (`deployment.stack_settings`, from
`Pulumi.<stack>.yaml`), applies the prices in `rates.py`, and shows each line at list
price and after the free tiers AWS names (free tiers are per account: other use of the
same account shares them). Fargate Spot is a range, not a promise.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunnel.ops import rates

METRICS_INTERVAL = 60.0  # seconds: the server's default (configs/server.yaml)
EMF_LINE_BYTES = 330  # one metrics line a minute (tunnel/server/emf.py)
IMAGE_MB = 93.0  # the server image compressed, as ECR stores it (measured: `docker save | gzip`, 2026-11-27)
POLLS_PER_WAKE = 20  # one wake, then status every 5 s while the task starts (about 90 s)
LAMBDA_SECONDS = 0.5  # a control-plane invocation, billed at 128 MB
SERVER_SERIES = 3  # the server's metrics (tunnel/server/emf.py), one series each


@dataclass(frozen=True)
class Usage:
    hours_per_month: float = 40.0
    agents: int = 1
    wakes_per_month: int = 30
    log_mb_per_hour: float = 0.5  # the server's JSON log at info level, with a connected agent
    image_mb: float = IMAGE_MB
    per_agent_series: bool = False
    gb_per_month: float = 0.0  # sent to agents (downloads through the tunnel): data transfer out


@dataclass
class Line:
    item: str
    low: float  # list price, cheapest case (Spot's largest discount)
    high: float  # list price, dearest case
    free: float  # after the free tier (the high figure)
    note: str = ""


@dataclass
class Estimate:
    region: str
    rates_taken: str
    running: list[Line] = field(default_factory=list)
    stopped: list[Line] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def total(self, lines: list[Line], what: str) -> float:
        return round(sum(getattr(line, what) for line in lines), 4)

    def as_dict(self) -> dict:
        out = asdict(self)
        for part in ("running", "stopped"):
            out[f"{part}_total"] = {what: self.total(getattr(self, part), what) for what in ("low", "high", "free")}
        out["month_total"] = {
            what: round(out["running_total"][what] + out["stopped_total"][what], 4) for what in ("low", "high", "free")
        }
        return out


def read_stack(path: Path) -> tuple[dict, str | None]:
    """`fluidity:*` values (without the prefix) and aws:region from a stack file."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        from tunnel.config import yaml_problem

        raise ValueError(f"{path}: {yaml_problem(e)}") from None
    config = data.get("config") if isinstance(data, dict) else None
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: 'config' must be a mapping")
    values = {
        k.split(":", 1)[1]: v
        for k, v in config.items()
        if isinstance(k, str) and k.startswith("fluidity:") and not isinstance(v, dict)
    }
    region = config.get("aws:region")
    return values, str(region) if region else None


class _Config(dict):
    """What `deployment.stack_settings.from_config` reads: `get(key)` like pulumi.Config."""

    def get(self, key, default=None):
        value = super().get(key, default)
        return None if value is None else str(value)


def _runs_per_month(expression: str | None) -> float:
    """How often a schedule fires in a month: rate() exactly, cron() as daily unless it
    names weekdays (about 22 a month)."""
    if not expression:
        return 0.0
    rate = re.match(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$", expression)
    if rate:
        minutes = int(rate.group(1)) * {"m": 1, "h": 60, "d": 1440}[rate.group(2)[0]]
        return rates.HOURS_PER_MONTH * 60 / minutes
    return 22.0 if "MON-FRI" in expression.upper() else 30.0


def _fargate(s, hours: float) -> Line:
    """The task's compute: on-demand, or Spot's range of discounts, times the tasks scaling may run."""
    price = rates.FARGATE[s.cpu_architecture]
    compute = hours * (s.cpu / 1024 * price["vcpu_hour"] + s.memory / 1024 * price["gb_hour"])
    tasks = s.max_tasks  # scaled: one task at the least, maxTasks at the most
    if s.capacity == "FARGATE_SPOT":
        low, high = compute * (1 - rates.SPOT_DISCOUNT[1]), compute * (1 - rates.SPOT_DISCOUNT[0])
        note = (
            f"Spot: {int(rates.SPOT_DISCOUNT[0] * 100)}-{int(rates.SPOT_DISCOUNT[1] * 100)}% off on-demand, may be "
            f"interrupted"
        )
    else:
        low = high = compute
        note = "on-demand"
    high *= tasks
    if tasks > 1:
        note += f"; 1 to {tasks} tasks as Application Auto Scaling decides"
    return Line(
        f"Fargate {s.cpu / 1024:g} vCPU, {s.memory / 1024:g} GB, {s.cpu_architecture}, {hours:g} h"
        + (f", x1-{tasks} tasks" if tasks > 1 else ""),
        low,
        high,
        high,
        note,
    )


def _control_plane_calls(u: Usage) -> Line:
    """API Gateway and Lambda for the wakes and the agents' polls while waking."""
    calls = u.wakes_per_month * POLLS_PER_WAKE
    api = calls / 1e6 * rates.API_GATEWAY_REST_PER_MILLION + calls * (
        rates.LAMBDA_PER_MILLION / 1e6 + 0.128 * LAMBDA_SECONDS * rates.LAMBDA_GB_SECOND
    )
    return Line(
        f"control plane: {calls} API calls ({u.wakes_per_month} wakes)",
        api,
        api,
        0.0,
        "API Gateway and Lambda; free tier: " + rates.FREE_TIER["Lambda"],
    )


def _schedules(est: Estimate, s, u: Usage, hours: float) -> None:
    """The scheduled Lambdas (sleep, kill, wake) while stopped, and sleep's metric reads while running."""
    run, idle = est.running, est.stopped
    sleeps = _runs_per_month(s.sleep_schedule)
    others = _runs_per_month(s.kill_schedule) + _runs_per_month(s.wake_schedule)
    invocations = sleeps + others
    lambda_cost = invocations * (rates.LAMBDA_PER_MILLION / 1e6 + 0.128 * LAMBDA_SECONDS * rates.LAMBDA_GB_SECOND)
    scheduler = invocations / 1e6 * rates.SCHEDULER_PER_MILLION
    # Sleep reads two metrics per run, but only while the server runs (stopped: it returns first);
    # with a budget, two more, and wake two per call.
    running_sleeps = sleeps * hours / rates.HOURS_PER_MONTH
    budgeted = s.monthly_budget is not None
    count = running_sleeps * (4 if budgeted else 2) + (u.wakes_per_month * 2 if budgeted else 0)
    reads = count / 1000 * rates.CLOUDWATCH_API_PER_1000
    idle.append(
        Line(
            f"schedules: {invocations:,.0f} Lambda runs (sleep every {s.sleep_schedule[5:-1]})",
            lambda_cost + scheduler,
            lambda_cost + scheduler,
            0.0,
            "Lambda and EventBridge Scheduler; free tier: " + rates.FREE_TIER["EventBridge Scheduler"],
        )
    )
    run.append(
        Line(
            f"{'sleep and wake' if budgeted else 'sleep'}'s metric reads: {count:,.0f} GetMetricStatistics",
            reads,
            reads,
            0.0,
            "free tier: " + rates.FREE_TIER["CloudWatch API requests"],
        )
    )


def estimate(settings, usage: Usage, region: str | None) -> Estimate:
    s, u = settings, usage
    hours = u.hours_per_month
    est = Estimate(region=rates.REGION, rates_taken=rates.TAKEN)
    if region and region != rates.REGION:
        est.warnings.append(f"the rates are {rates.REGION}'s (taken {rates.TAKEN}); {region} differs by a few per cent")

    tasks = s.max_tasks  # scaled: one task at the least, maxTasks at the most
    run = est.running
    run.append(_fargate(s, hours))
    ipv4 = hours * rates.PUBLIC_IPV4_HOUR
    run.append(
        Line(
            "public IPv4 address while the task runs" if tasks == 1 else "public IPv4 address of each running task",
            ipv4,
            ipv4 * tasks,
            ipv4 * tasks,
            "$0.005 an hour",
        )
    )
    if s.behind_nlb:
        _load_balancer(est, s, hours)
    if u.gb_per_month:
        run.append(data_transfer(u.gb_per_month))
    # ActiveConnections, LastActivityEpochSeconds and BytesSentToAgents; per-agent series
    # are opt-in (metrics.per_agent, one more series each) and the task does not turn them on.
    series = SERVER_SERIES + (u.agents if u.per_agent_series else 0)
    metrics = series * rates.CUSTOM_METRIC_MONTH * hours / rates.HOURS_PER_MONTH
    run.append(
        Line(
            f"CloudWatch custom metrics: {series} series, {hours:g} h",
            metrics,
            metrics,
            0.0,
            "prorated by the hour, from EMF log lines (no PutMetricData calls); free tier: "
            + rates.FREE_TIER["custom metrics"],
        )
    )
    emf_mb = hours * 3600 / METRICS_INTERVAL * EMF_LINE_BYTES / 2**20
    ingest_gb = (hours * u.log_mb_per_hour + emf_mb) / 1024
    stored = ingest_gb * min(s.log_retention_days, 3653) / 30 * rates.LOGS_STORE_GB_MONTH
    logs = ingest_gb * rates.LOGS_INGEST_GB + stored
    run.append(
        Line(
            f"server logs: {ingest_gb * 1024:.0f} MB, kept {s.log_retention_days} days",
            logs,
            logs,
            0.0,
            "free tier: " + rates.FREE_TIER["log ingestion"],
        )
    )
    if s.control_plane:
        run.append(_control_plane_calls(u))

    idle = est.stopped
    keep = _images_kept()
    ecr = u.image_mb / 1024 * keep * rates.ECR_STORE_GB_MONTH
    idle.append(
        Line(
            f"ECR: {keep} images of {u.image_mb:.0f} MB",
            ecr,
            ecr,
            ecr if u.image_mb * keep > 500 else 0.0,
            "free tier: " + rates.FREE_TIER["ECR storage"],
        )
    )
    idle.append(
        Line("SSM SecureString parameters (3, standard tier)", 0.0, 0.0, 0.0, rates.FREE_TIER["SSM parameters"])
    )
    if s.control_plane:
        _schedules(est, s, u, hours)
    _monitoring(est, s)
    for line in run + idle:
        line.low, line.high, line.free = (round(v, 4) for v in (line.low, line.high, line.free))
    return est


def budget_prices(settings) -> dict[str, float]:
    """What the control plane weighs a month with (`deployment/budget.py`), at list price and
    on the dear side: a task-hour on demand (Spot's discount is not counted) with its
    public IPv4 address, a GB sent with no free allowance, and the month's fixed lines."""
    price = rates.FARGATE[settings.cpu_architecture]
    task_hour = settings.cpu / 1024 * price["vcpu_hour"] + settings.memory / 1024 * price["gb_hour"]
    if settings.assign_public_ip == "ENABLED":
        task_hour += rates.PUBLIC_IPV4_HOUR
    if settings.behind_nlb:
        task_hour += rates.NLCU_HOUR
    stopped = estimate(settings, Usage(), None)
    return {
        "task_hour": task_hour,
        "gb_sent": rates.DATA_TRANSFER_OUT_GB,
        "fixed": stopped.total(stopped.stopped, "high"),
    }


def data_transfer(gb: float) -> Line:
    """What leaves AWS from the task: the account's first 100 GB a month are free."""
    paid = max(0.0, gb - rates.DATA_TRANSFER_FREE_GB)
    return Line(
        f"data transfer out: {gb:,.1f} GB",
        gb * rates.DATA_TRANSFER_OUT_GB,
        gb * rates.DATA_TRANSFER_OUT_GB,
        paid * rates.DATA_TRANSFER_OUT_GB,
        f"${rates.DATA_TRANSFER_OUT_GB} a GB; free tier: " + rates.FREE_TIER["data transfer out"],
    )


def _monitoring(est: Estimate, s) -> None:
    """The alarm, billed per metric it reads, and the opt-in dashboard: counted from what
    the stack declares (`deployment.alarm_specs`), billed whether the server runs or not."""
    from deployment.alarm_specs import alarm_metric_count, dashboards

    metrics = alarm_metric_count(s)
    if metrics:
        alarms = metrics * rates.ALARM_MONTH
        est.stopped.append(
            Line(
                f"monitoring: 1 alarm reading {metrics} metrics (control plane errors, sleep throttles)",
                alarms,
                alarms,
                0.0,
                "$0.10 a metric; free tier: " + rates.FREE_TIER["alarms"] + "; monitoring: false drops it",
            )
        )
    count = dashboards(s)
    if count:
        cost = count * rates.DASHBOARD_MONTH
        est.stopped.append(
            Line(
                f"dashboard: {count} (dashboard: true)",
                cost,
                cost,
                0.0,
                "free tier: " + rates.FREE_TIER["dashboards"] + "; dashboard: false (the default) drops it",
            )
        )


def _load_balancer(est: Estimate, s, hours: float) -> None:
    """stableEndpoint nlb: billed every hour it exists, also while the tasks are stopped."""
    month = rates.HOURS_PER_MONTH
    subnets = len(s.public_subnets) if s.public_subnets else 3  # the default VPC: a subnet per zone, often 3
    est.stopped.append(
        Line(
            "Network Load Balancer (stableEndpoint nlb)",
            month * rates.NLB_HOUR,
            month * rates.NLB_HOUR,
            month * rates.NLB_HOUR,
            "$0.0225 an hour, whether the tasks run or not",
        )
    )
    ipv4 = month * subnets * rates.PUBLIC_IPV4_HOUR
    est.stopped.append(
        Line(
            f"the load balancer's public IPv4 addresses: {subnets}",
            ipv4,
            ipv4,
            ipv4,
            "one per subnet" + ("" if s.public_subnets else " (assumed: the default VPC's, one per zone)"),
        )
    )
    lcu = hours * rates.NLCU_HOUR
    est.running.append(
        Line(
            f"load balancer capacity: 0-1 NLCU, {hours:g} h",
            0.0,
            lcu,
            lcu,
            "an NLCU is 1 GB an hour (or 800 new connections a second): one person stays under one",
        )
    )
    always = month * (rates.NLB_HOUR + subnets * rates.PUBLIC_IPV4_HOUR)
    est.warnings.append(
        f"stableEndpoint nlb: the load balancer and its addresses cost about ${always:.2f} a month even while the "
        "server is stopped; with stableEndpoint none (the default) there is no such line"
    )


def _images_kept() -> int:
    from deployment.stack_settings import ECR_KEEP_IMAGES

    return ECR_KEEP_IMAGES


def render(est: Estimate, usage: Usage) -> str:
    def money(low: float, high: float) -> str:
        return f"${low:,.2f}" if abs(high - low) < 0.005 else f"${low:,.2f}-{high:,.2f}"

    out = [
        f"Fluidity on AWS for {usage.hours_per_month:g} hours a month, {usage.agents} agent(s) (rates: {est.region}, "
        f"{est.rates_taken})",
        "",
    ]
    for title, lines in (("While it runs", est.running), ("Always (also while stopped)", est.stopped)):
        out.append(f"{title}:")
        width = max(len(line.item) for line in lines)
        for line in lines:
            cost, free = money(line.low, line.high), money(line.free, line.free)
            out.append(f"  {line.item:<{width}}  {cost:>12}  after free tier {free:>7}   {line.note}")
        cost = money(est.total(lines, "low"), est.total(lines, "high"))
        free = money(est.total(lines, "free"), est.total(lines, "free"))
        out.append(f"  {'total':<{width}}  {cost:>12}  after free tier {free:>7}")
        out.append("")
    month = est.as_dict()["month_total"]
    stopped = est.as_dict()["stopped_total"]
    balancer = [line for line in est.stopped if "load balancer" in line.item.lower()]
    of_which = (
        f", of which the load balancer {money(sum(x.high for x in balancer), sum(x.high for x in balancer))} "
        "(billed while stopped)"
        if balancer
        else ""
    )
    out.append(
        f"A month: {money(month['low'], month['high'])} at list price, {money(month['free'], month['free'])} after the "
        f"free tiers; stopped: {money(stopped['low'], stopped['high'])} ({money(stopped['free'], stopped['free'])})"
        f"{of_which}."
    )
    out += [f"note: {w}" for w in est.warnings]
    return "\n".join(out)


REGION_NAME = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}$")


def main(stack_file: Path | None, usage: Usage, region: str | None, as_json: bool) -> str:
    """The estimate for a stack file, or (None: no stack here) for the stack's defaults."""
    from deployment.stack_settings import SettingsError, from_config

    values, stack_region = read_stack(stack_file) if stack_file is not None else ({}, None)
    if region is not None and not REGION_NAME.match(region):
        raise ValueError(f"--region {region!r} is not an AWS region name (e.g. eu-west-1)")
    try:
        settings = from_config(_Config(values))
    except SettingsError as e:
        raise ValueError(f"{stack_file}: {e}") from None
    est = estimate(settings, usage, region or stack_region)
    if stack_file is None:
        est.warnings.append(
            "no Pulumi.<stack>.yaml in this folder: this prices the stack's defaults (run it in infra/, or pass "
            "--stack FILE)"
        )
    return json.dumps(est.as_dict(), indent=2) if as_json else render(est, usage)


def month_report(stack_file: Path | None, region: str | None, as_json: bool, now: float | None = None) -> str:
    """`fluidity cost --month`: the month so far, weighed as the control plane weighs it
    (`deployment.budget`, from the server's metrics in CloudWatch), against monthlyBudget."""
    import time

    from deployment.budget import Budget, month_so_far
    from deployment.stack_settings import SettingsError, from_config
    from tunnel.ops.operations import AwsTarget, _aws_call, _clients

    if region is not None and not REGION_NAME.match(region):
        raise ValueError(f"--region {region!r} is not an AWS region name (e.g. eu-west-1)")
    values, stack_region = read_stack(stack_file) if stack_file is not None else ({}, None)
    try:
        settings = from_config(_Config(values))
    except SettingsError as e:
        raise ValueError(f"{stack_file}: {e}") from None
    prices = budget_prices(settings)
    limit = settings.monthly_budget
    budget = Budget(
        limit if limit is not None else float("inf"), prices["task_hour"], prices["gb_sent"], prices["fixed"]
    )
    _, _, cloudwatch = _clients(AwsTarget(region=region or stack_region))
    moment = time.time() if now is None else now
    so_far = _aws_call(month_so_far, cloudwatch, settings.metrics_namespace, settings.service_name, budget, moment)
    if limit is None:
        so_far["budget"] = None
    if as_json:
        return json.dumps(so_far, indent=2)
    hours, gb = so_far["taskHours"], so_far["gbSent"]
    rows = [
        (f"the task running: {hours:g} task-hours", hours * budget.task_hour),
        (f"sent to agents: {gb:g} GB", gb * budget.gb_sent),
        ("the month's fixed lines", budget.fixed),
        ("total", so_far["cost"]),
    ]
    out = [f"{so_far['month']} so far (UTC), {settings.service_name}, at list price before free tiers and Spot:"]
    out += [f"  {label:<40}{'$' + format(amount, ',.2f'):>10}" for label, amount in rows]
    if limit is None:
        out.append("No budget: set one with `pulumi config set fluidity:monthlyBudget 5` and `pulumi up`.")
    elif so_far["spent"]:
        out.append(
            f"The budget of ${limit:,.2f} is spent: wake refuses and sleep stops the server until "
            f"{so_far['resumes']} (UTC), or until the budget is raised."
        )
    else:
        out.append(f"Budget ${limit:,.2f}: {so_far['cost'] / limit:.0%} used, ${limit - so_far['cost']:,.2f} left.")
    return "\n".join(out)
