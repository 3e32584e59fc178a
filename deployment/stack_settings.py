"""Stack settings: every key of the seed's two CloudFormation stacks, with the same
defaults, read from `pulumi.Config("fluidity")` and checked before any resource exists.

Pure Python (no resources), so a bad value stops `pulumi up` with one clear message.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import TypeVar

from .server_port import SERVER_PORT

ECR_KEEP_IMAGES = 2  # images the repository keeps: the running one and the one before it, for a rollback

# Fargate's CPU units and the memory (MiB) each allows.
FARGATE_MEMORY = {
    256: [512, 1024, 2048],
    512: [1024 * n for n in range(1, 5)],
    1024: [1024 * n for n in range(2, 9)],
    2048: [1024 * n for n in range(4, 17)],
    4096: [1024 * n for n in range(8, 31)],
    8192: [1024 * n for n in range(16, 61, 4)],
    16384: [1024 * n for n in range(32, 121, 8)],
}
LOG_RETENTION_DAYS = {
    1,
    3,
    5,
    7,
    14,
    30,
    60,
    90,
    120,
    150,
    180,
    365,
    400,
    545,
    731,
    1096,
    1827,
    2192,
    2557,
    2922,
    3288,
    3653,
}
_RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
_CRON = re.compile(r"^cron\((\S+ ){5}\S+\)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,254}$")


class SettingsError(ValueError):
    """A stack config value Fluidity cannot deploy; the message says which and why."""


@dataclass(frozen=True)
class StackSettings:
    cluster_name: str = "fluidity"
    service_name: str = "fluidity-server"
    container_image: str | None = None  # None: the stack's own ECR repository, tag latest
    container_port: int = SERVER_PORT
    cpu: int = 256
    memory: int = 512
    desired_count: int | None = None  # None: not in the stack config, the control plane owns it
    vpc_id: str | None = None  # None: the account's default VPC
    public_subnets: list[str] | None = None  # None: the default VPC's default-for-AZ subnets
    allowed_ingress_cidr: str | None = None  # None: open only to the addresses that woke the server
    assign_public_ip: str = "ENABLED"
    log_group_name: str = "/fluidity/server"
    log_retention_days: int = 14
    idle_threshold_minutes: int = 5
    sleep_schedule: str = "rate(5 minutes)"
    kill_schedule: str = "cron(0 23 * * ? *)"
    control_plane: bool = True
    monitoring: bool = True  # the error alarm and its topic (with the control plane)
    dashboard: bool = False  # a CloudWatch dashboard too (with monitoring): $3.00 a month at list price
    capacity: str = "FARGATE_SPOT"  # on-demand FARGATE when Spot places no task (lambdas/capacity.py)
    cpu_architecture: str = "X86_64"
    metrics_namespace: str = "Fluidity"
    log_level: str = "info"
    lookback_minutes: int = 10
    schedule_timezone: str = "UTC"  # for sleepSchedule, killSchedule and wakeSchedule
    wake_schedule: str | None = None  # e.g. cron(0 8 ? * MON-FRI *): start for working hours
    alarm_email: str | None = None  # subscribed to the alarm topic (AWS mails a confirmation)
    api_rate_limit: float = 2.0  # requests per second, steady
    api_burst_limit: int = 10
    api_monthly_quota: int = 20000  # requests per month; an agent makes a few per wake
    stable_endpoint: str = "none"  # "nlb": a Network Load Balancer whose DNS name never changes
    max_tasks: int = 1  # above 1, Application Auto Scaling runs 1..max_tasks while the server runs
    monthly_budget: float | None = None  # dollars: past it, wake refuses and sleep stops the server
    warnings: list[str] = field(default_factory=list, compare=False)

    @property
    def ingress_open_to_world(self) -> bool:
        return self.allowed_ingress_cidr is not None and ipaddress.ip_network(self.allowed_ingress_cidr).prefixlen == 0

    @property
    def ingress_for_wakers(self) -> bool:
        return self.allowed_ingress_cidr is None

    @property
    def behind_nlb(self) -> bool:
        return self.stable_endpoint == "nlb"

    @property
    def scales(self) -> bool:
        return self.max_tasks > 1


D = TypeVar("D", int, None)
Opt = TypeVar("Opt", str, None)


def _int(config, key: str, default: D, low: int, high: int) -> int | D:
    raw = config.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise SettingsError(f"fluidity:{key} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"fluidity:{key} must be between {low} and {high}, got {value}")
    return value


def _choice(config, key: str, default: str, choices: tuple[str, ...]) -> str:
    value = (config.get(key) or default).strip()
    if value not in choices:
        raise SettingsError(f"fluidity:{key} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _bool(config, key: str, default: bool) -> bool:
    raw = config.get(key)
    if raw is None or raw == "":
        return default
    text = str(raw).strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    raise SettingsError(f"fluidity:{key} must be true or false, got {raw!r}")


def _timezone(config, key: str) -> str:
    """An IANA time zone name, as EventBridge Scheduler takes it."""
    import zoneinfo

    value = (config.get(key) or "UTC").strip()
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise SettingsError(
            f"fluidity:{key} must be an IANA time zone such as Europe/Berlin or America/New_York, got {value!r}"
        ) from None
    return value


def _email(config, key: str) -> str | None:
    value = (config.get(key) or "").strip()
    if not value:
        return None
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
        raise SettingsError(f"fluidity:{key} must be an e-mail address, got {value!r}")
    return value


def _float(config, key: str, default: float, low: float, high: float) -> float:
    raw = config.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise SettingsError(f"fluidity:{key} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"fluidity:{key} must be between {low:g} and {high:g}, got {value:g}")
    return value


def _schedule(config, key: str, default: Opt) -> str | Opt:
    value = str(config.get(key) or "").strip()
    if not value:
        return default  # blank is the default (none for a schedule that has none)
    rate = _RATE.match(value)
    if rate:
        number, unit = int(rate.group(1)), rate.group(2)
        if number < 1 or (number == 1) != (not unit.endswith("s")):
            raise SettingsError(
                f"fluidity:{key}: {value!r} is not a valid rate (use 'rate(1 minute)' or 'rate(5 minutes)')"
            )
        return value
    if _CRON.match(value):
        fields = value[5:-1].split()
        if fields[2] != "?" and fields[4] != "?":
            raise SettingsError(f"fluidity:{key}: {value!r}: EventBridge cron needs '?' in day-of-month or day-of-week")
        return value
    raise SettingsError(
        f"fluidity:{key}: {value!r} is not an EventBridge schedule (expected 'rate(5 minutes)' or 'cron(0 23 * * ? *)')"
    )


def _name(config, key: str, default: str) -> str:
    value = (config.get(key) or default).strip()
    if not _NAME.match(value):
        raise SettingsError(f"fluidity:{key} must be letters, digits, '-' or '_' (at most 255), got {value!r}")
    return value


def _subnets(config) -> list[str] | None:
    raw = config.get_object("publicSubnets") if hasattr(config, "get_object") else config.get("publicSubnets")
    if raw in (None, "", []):
        return None
    if isinstance(raw, str):
        raw = [part.strip() for part in raw.split(",") if part.strip()]
    if not isinstance(raw, list) or not all(isinstance(s, str) and s.startswith("subnet-") for s in raw):
        raise SettingsError(f"fluidity:publicSubnets must be a list of subnet ids (subnet-...), got {raw!r}")
    return raw


def from_config(config) -> StackSettings:
    """Read and check every key; `config` is a `pulumi.Config` (or anything with get)."""
    cpu, memory = _cpu_memory(config)
    network = _ingress_cidr(config)
    vpc_id, subnets = _network(config)
    log_group = _log_group(config)
    retention = _retention(config)
    settings = StackSettings(
        cluster_name=_name(config, "clusterName", "fluidity"),
        service_name=_name(config, "serviceName", "fluidity-server"),
        container_image=(config.get("containerImage") or "").strip() or None,
        container_port=_int(config, "containerPort", SERVER_PORT, 1, 65535),
        cpu=cpu,
        memory=memory,
        desired_count=_int(config, "desiredCount", None, 0, 10),
        vpc_id=vpc_id,
        public_subnets=subnets,
        allowed_ingress_cidr=str(network) if network is not None else None,
        assign_public_ip=_choice(config, "assignPublicIp", "ENABLED", ("ENABLED", "DISABLED")),
        log_group_name=log_group,
        log_retention_days=retention,
        idle_threshold_minutes=_int(config, "idleThresholdMinutes", 5, 1, 1440),
        sleep_schedule=_schedule(config, "sleepSchedule", "rate(5 minutes)"),
        kill_schedule=_schedule(config, "killSchedule", "cron(0 23 * * ? *)"),
        control_plane=_bool(config, "controlPlane", True),
        monitoring=_bool(config, "monitoring", True),
        dashboard=_bool(config, "dashboard", False),
        capacity=_choice(config, "capacity", "FARGATE_SPOT", ("FARGATE", "FARGATE_SPOT")),
        cpu_architecture=_choice(config, "cpuArchitecture", "X86_64", ("X86_64", "ARM64")),
        metrics_namespace=_name(config, "metricsNamespace", "Fluidity"),
        log_level=_choice(config, "logLevel", "info", ("debug", "info", "warn", "error")),
        lookback_minutes=_int(config, "lookbackMinutes", 10, 1, 1440),
        schedule_timezone=_timezone(config, "scheduleTimezone"),
        wake_schedule=_schedule(config, "wakeSchedule", None),
        alarm_email=_email(config, "alarmEmail"),
        api_rate_limit=_float(config, "apiRateLimit", 2.0, 0.1, 10000.0),
        api_burst_limit=_int(config, "apiBurstLimit", 10, 1, 5000),
        api_monthly_quota=_int(config, "apiMonthlyQuota", 20000, 100, 10**9),
        stable_endpoint=_choice(config, "stableEndpoint", "none", ("none", "nlb")),
        max_tasks=_int(config, "maxTasks", 1, 1, 10),
        monthly_budget=_budget(config),
    )
    _check_scaling(settings)
    _warn(settings)
    return settings


def _cpu_memory(config) -> tuple[int, int]:
    """CPU units and MiB as a pair Fargate offers."""
    cpu = _int(config, "cpu", 256, 256, 16384)
    memory = _int(config, "memory", 512, 512, 122880)
    if cpu not in FARGATE_MEMORY:
        raise SettingsError(
            f"fluidity:cpu must be one of {', '.join(map(str, FARGATE_MEMORY))} (Fargate CPU units), got {cpu}"
        )
    if memory not in FARGATE_MEMORY[cpu]:
        allowed = FARGATE_MEMORY[cpu]
        raise SettingsError(
            f"Fargate does not offer cpu {cpu} with memory {memory}: with cpu {cpu}, memory must be one of "
            f"{', '.join(map(str, allowed))} MiB"
        )
    return cpu, memory


def _ingress_cidr(config):
    """The IPv4 network allowed to the server's port, or None."""
    cidr = (config.get("allowedIngressCidr") or "").strip()
    network = None
    if cidr:
        try:
            network = ipaddress.ip_network(cidr, strict=True)
        except ValueError as e:
            raise SettingsError(
                f"fluidity:allowedIngressCidr must be a CIDR like 203.0.113.0/24, got {cidr!r} ({e})"
            ) from None
        if network.version != 4:
            raise SettingsError(
                f"fluidity:allowedIngressCidr must be an IPv4 CIDR (the task has a public IPv4), got {cidr!r}"
            )
    return network


def _network(config) -> tuple[str | None, list[str] | None]:
    """Your own VPC and its public subnets, or None for the default VPC's."""
    vpc_id = (config.get("vpcId") or "").strip() or None
    if vpc_id and not vpc_id.startswith("vpc-"):
        raise SettingsError(f"fluidity:vpcId must look like vpc-..., got {vpc_id!r}")
    subnets = _subnets(config)
    if vpc_id and not subnets:
        raise SettingsError(
            "fluidity:publicSubnets is required when fluidity:vpcId is set (the default VPC's subnets only apply to "
            "the default VPC)"
        )
    return vpc_id, subnets


def _log_group(config) -> str:
    log_group = (config.get("logGroupName") or "/fluidity/server").strip()
    if not re.match(r"^[\w\-./#]{1,512}$", log_group):
        raise SettingsError(f"fluidity:logGroupName has characters CloudWatch Logs does not allow: {log_group!r}")
    return log_group


def _retention(config) -> int:
    """Days, one of those CloudWatch Logs accepts."""
    retention = _int(config, "logRetentionDays", 14, 1, 3653)
    if retention not in LOG_RETENTION_DAYS:
        raise SettingsError(
            f"fluidity:logRetentionDays must be one of {', '.join(map(str, sorted(LOG_RETENTION_DAYS)))}, got "
            f"{retention}"
        )
    return retention


def _warn(settings: StackSettings) -> None:
    """Settings that deploy but are likely not what was meant."""
    if settings.ingress_open_to_world:
        settings.warnings.append(
            f"fluidity:allowedIngressCidr is {settings.allowed_ingress_cidr}: port {settings.container_port} is open "
            f"to the whole internet "
            "(only holders of a client certificate get through, but set your own network with `pulumi config set "
            "allowedIngressCidr 203.0.113.0/24`)"
        )
    if settings.assign_public_ip == "DISABLED" and not settings.behind_nlb:
        settings.warnings.append(
            "fluidity:assignPublicIp is DISABLED: the agent cannot reach the task unless your subnets route to it"
        )


def _budget(config) -> float | None:
    raw = config.get("monthlyBudget")
    if raw is None or str(raw).strip() == "":
        return None
    return _float(config, "monthlyBudget", 0.0, 0.01, 1e6)


def _check_scaling(settings: StackSettings) -> None:
    """Combinations that would deploy something that cannot work, refused before anything exists."""
    if settings.scales and settings.desired_count is not None:
        raise SettingsError(
            f"fluidity:maxTasks is {settings.max_tasks}, so Application Auto Scaling sets the number of tasks while "
            "the server runs: remove fluidity:desiredCount (`pulumi config rm desiredCount`), or keep it with "
            "maxTasks 1"
        )
    if settings.monthly_budget is not None and not settings.control_plane:
        raise SettingsError(
            "fluidity:monthlyBudget needs the control plane (it is what stops the server and refuses wakes): remove "
            "fluidity:controlPlane false, or the budget"
        )
    if settings.scales and not settings.behind_nlb:
        raise SettingsError(
            f"fluidity:maxTasks is {settings.max_tasks}, but each task has its own address: set "
            "fluidity:stableEndpoint nlb so agents dial one name that reaches them all"
        )
    if settings.behind_nlb and settings.assign_public_ip == "DISABLED":
        settings.warnings.append(
            "fluidity:assignPublicIp is DISABLED behind the load balancer: the tasks reach the internet only if "
            "your subnets route them through a NAT gateway"
        )
