"""Settings from the Lambda's environment, read per invocation and checked."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .budget import Budget
from .ingress import IngressSettings
from .server_port import SERVER_PORT


class SettingsError(ValueError):
    """The function is deployed with a missing or malformed environment variable."""


@dataclass(frozen=True)
class Settings:
    cluster: str
    service: str
    container_port: int = SERVER_PORT
    namespace: str = "Fluidity"
    idle_threshold_minutes: float = 5
    lookback_minutes: float = 10
    ingress: IngressSettings | None = None  # None: the stack opens the port to a fixed CIDR
    stable_endpoint: str = ""  # stableEndpoint nlb: the load balancer's DNS name, what agents dial
    max_tasks: int = 1  # above 1, Application Auto Scaling sets the count between bounds set here
    budget: Budget | None = None  # monthlyBudget: past it, wake refuses and sleep stops the server
    capacity: str = "FARGATE"  # FARGATE_SPOT: on-demand when Spot places no task (`capacity`)


def _number(env, name: str, default, cast, low, high):
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {raw!r}")
    return value


def from_env(env=None) -> Settings:
    env = os.environ if env is None else env
    missing = [name for name in ("CLUSTER_NAME", "SERVICE_NAME") if not env.get(name, "").strip()]
    if missing:
        raise SettingsError(f"{' and '.join(missing)} must be set")
    return Settings(
        cluster=env["CLUSTER_NAME"].strip(),
        service=env["SERVICE_NAME"].strip(),
        container_port=_number(env, "CONTAINER_PORT", SERVER_PORT, int, 1, 65535),
        namespace=env.get("METRICS_NAMESPACE", "").strip() or "Fluidity",
        idle_threshold_minutes=_number(env, "IDLE_THRESHOLD_MINUTES", 5, float, 1, 24 * 60),
        lookback_minutes=_number(env, "LOOKBACK_MINUTES", 10, float, 1, 24 * 60),
        ingress=_ingress(env),
        stable_endpoint=_endpoint(env),
        max_tasks=_number(env, "MAX_TASKS", 1, int, 1, 10),
        budget=_budget(env),
        capacity=_capacity(env),
    )


def _capacity(env) -> str:
    value = env.get("CAPACITY", "").strip() or "FARGATE"
    if value not in ("FARGATE", "FARGATE_SPOT"):
        raise SettingsError(f"CAPACITY must be FARGATE or FARGATE_SPOT, got {value!r}")
    return value


def _budget(env) -> Budget | None:
    """MONTHLY_BUDGET and the three prices the stack derives from its settings."""
    limit = _number(env, "MONTHLY_BUDGET", None, float, 0.01, 1e6)
    if limit is None:
        return None
    return Budget(
        limit=limit,
        task_hour=_number(env, "BUDGET_TASK_HOUR", 0.0, float, 0.0, 1e3),
        gb_sent=_number(env, "BUDGET_GB_SENT", 0.0, float, 0.0, 1e3),
        fixed=_number(env, "BUDGET_FIXED", 0.0, float, 0.0, 1e6),
    )


def _endpoint(env) -> str:
    name = env.get("STABLE_ENDPOINT", "").strip().lower().rstrip(".")
    if name and not all(part and part.replace("-", "").isalnum() for part in name.split(".")):
        raise SettingsError(f"STABLE_ENDPOINT must be a DNS name, got {name!r}")
    return name


def _ingress(env) -> IngressSettings | None:
    group = env.get("INGRESS_GROUP_ID", "").strip()
    if not group:
        return None
    if not group.startswith("sg-"):
        raise SettingsError(f"INGRESS_GROUP_ID must be a security group id (sg-...), got {group!r}")
    return IngressSettings(
        group_id=group,
        port=_number(env, "CONTAINER_PORT", SERVER_PORT, int, 1, 65535),
        max_rules=_number(env, "INGRESS_MAX_RULES", 50, int, 1, 55),
        ttl_hours=_number(env, "INGRESS_TTL_HOURS", 24, float, 1, 24 * 30),
    )
