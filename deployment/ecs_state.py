"""What the ECS service is doing, in the words the agent and the CLI use.

`status` is `stopped`, `starting`, `running` or `stopping`, derived from desiredCount and
the service's own tasks (not from the service's counters, which lag); a task is `running`
only once ECS's health check says HEALTHY; `publicIp` is the
running task's public IPv4, read from its network interface, so the agent can find a
server whose address changes at every start, and `publicDnsName` that interface's public
DNS name (a VPC with DNS host names gives one), which an agent behind a proxy that refuses
CONNECTs to raw addresses dials instead.
"""

from __future__ import annotations

import datetime
import time

from . import scaling
from .settings import Settings

PENDING_STATES = {"PROVISIONING", "PENDING", "ACTIVATING"}
STOPPING_STATES = {"DEACTIVATING", "STOPPING", "DEPROVISIONING"}
WAKE_TAG = "fluidity:last-wake"
# Who sets desiredCount: "pulumi" when the stack config sets it (the control plane and
# `fluidity start/stop` then leave it alone), "control-plane" otherwise. Set by infra/.
OWNER_TAG = "fluidity:desired-count-owner"
PULUMI_OWNS = "pulumi"


class OwnedByPulumi(Exception):
    """desiredCount is the stack config's to set: changing it here would be undone."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(
            f"the stack config sets desiredCount for {settings.cluster}/{settings.service}: start or stop it with "
            "`pulumi config set desiredCount 1` (or 0) and `pulumi up`, or hand it to the control plane with "
            "`pulumi config rm desiredCount` and `pulumi up`"
        )


class ServiceMissing(LookupError):
    """The cluster or service named in the settings does not exist."""


def describe_service(ecs, settings: Settings) -> dict:
    answer = ecs.describe_services(cluster=settings.cluster, services=[settings.service], include=["TAGS"])
    found = [s for s in answer.get("services", []) if s.get("status") != "INACTIVE"]
    if not found:
        raise ServiceMissing(f"ECS service {settings.service!r} not found in cluster {settings.cluster!r}")
    return found[0]


def service_tasks(ecs, settings: Settings) -> list[dict]:
    """The service's tasks that are running, starting or on their way down, newest first."""
    arns: list[str] = []
    for desired in ("RUNNING", "STOPPED"):
        pages = ecs.get_paginator("list_tasks").paginate(
            cluster=settings.cluster, serviceName=settings.service, desiredStatus=desired
        )
        for page in pages:
            arns.extend(page.get("taskArns", []))
    tasks: list[dict] = []
    for start in range(0, len(arns), 100):
        tasks.extend(ecs.describe_tasks(cluster=settings.cluster, tasks=arns[start : start + 100]).get("tasks", []))
    mine = [t for t in tasks if t.get("group") == f"service:{settings.service}"]
    return sorted(mine, key=lambda t: _epoch(t.get("createdAt")) or 0, reverse=True)


def public_address(ec2, task: dict) -> tuple[str | None, str | None]:
    """(public IPv4, public DNS name) of the task's ENI; None where it has none."""
    for attachment in task.get("attachments", []):
        if attachment.get("type") != "ElasticNetworkInterface":
            continue
        details = {d.get("name"): d.get("value") for d in attachment.get("details", [])}
        eni = details.get("networkInterfaceId")
        if not eni:
            continue
        interfaces = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni]).get("NetworkInterfaces", [])
        for interface in interfaces:
            association = interface.get("Association") or {}
            if association.get("PublicIp"):
                return association["PublicIp"], association.get("PublicDnsName") or None
    return None, None


def state(ecs, ec2, settings: Settings, with_ip: bool = True) -> dict:
    """The JSON body of wake / status / kill."""
    service = describe_service(ecs, settings)
    live, up, running, pending = _sorted_tasks(ecs, service_tasks(ecs, settings))
    desired = int(service.get("desiredCount", 0))
    status = ("running" if running else "starting") if desired > 0 else "stopping" if live else "stopped"
    ip, dns_name = public_address(ec2, running[0]) if (with_ip and running) else (None, None)
    return {
        "status": status,
        "desiredCount": desired,
        "runningCount": len(running),
        "pendingCount": len(pending) + len(up) - len(running),
        "publicIp": ip,
        "publicDnsName": dns_name,
        # Behind the stack's load balancer: the name agents dial, whichever task answers.
        "endpoint": settings.stable_endpoint or None,
        "maxTasks": settings.max_tasks,
        "port": settings.container_port,
        **_newest_task(next(iter(running or up or live), None)),
        "cluster": settings.cluster,
        "service": settings.service,
        "desiredCountOwner": owner(ecs, service),
    }


def _sorted_tasks(ecs, tasks: list[dict]) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """The service's tasks as the body counts them: live (not STOPPED), up (RUNNING and meant
    to), running (up and healthy: what ECS itself would route to), pending (on their way up)."""
    live = [t for t in tasks if t.get("lastStatus") != "STOPPED"]
    up = [t for t in live if t.get("lastStatus") == "RUNNING" and t.get("desiredStatus") == "RUNNING"]
    running = [t for t in up if healthy(ecs, t)]
    pending = [t for t in live if t.get("lastStatus") in PENDING_STATES and t.get("desiredStatus") == "RUNNING"]
    return live, up, running, pending


def _newest_task(task: dict | None) -> dict:
    """What the body says of the task it describes (the routed one, else the newest): its
    status, health and start, all None when there is no task."""
    if task is None:
        return {"taskStatus": None, "health": None, "taskStartedAt": None}
    return {
        "taskStatus": task.get("lastStatus"),
        "health": task.get("healthStatus") or _containers_health(task),
        "taskStartedAt": _epoch(task.get("startedAt") or task.get("createdAt")),
    }


_HEALTH_CHECKED: dict[str, bool] = {}  # task definition ARN -> defines a container health check


def healthy(ecs, task: dict) -> bool:
    """A RUNNING task is up when ECS says HEALTHY, or, if its task definition has no health
    check (ECS then says UNKNOWN for ever), as soon as it runs."""
    health = task.get("healthStatus") or _containers_health(task)
    if health != "UNKNOWN":
        return health == "HEALTHY"
    arn = str(task.get("taskDefinitionArn"))
    if arn not in _HEALTH_CHECKED:
        try:
            containers = ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"].get(
                "containerDefinitions", []
            )
        except Exception:  # cannot tell: UNKNOWN is then not yet healthy
            return False
        _HEALTH_CHECKED[arn] = any(c.get("healthCheck") for c in containers)
    return not _HEALTH_CHECKED[arn]


def _containers_health(task: dict) -> str:
    """The task's health from its containers' (what ECS derives the task's own from)."""
    states = {c.get("healthStatus") or "UNKNOWN" for c in task.get("containers", [])}
    for word in ("UNHEALTHY", "UNKNOWN"):
        if word in states:
            return word
    return "HEALTHY" if states else "UNKNOWN"


def owner(ecs, service: dict) -> str:
    """Who sets desiredCount (the service's OWNER_TAG; untagged services: the control plane)."""
    tags = service.get("tags")
    if tags is None:
        try:
            tags = ecs.list_tags_for_resource(resourceArn=service["serviceArn"]).get("tags", [])
        except Exception:
            tags = []
    return next((t.get("value") for t in tags if t.get("key") == OWNER_TAG), None) or "control-plane"


def set_desired(ecs, settings: Settings, count: int, service: dict | None = None, autoscaling=None) -> None:
    """Change desiredCount, unless the stack config owns it (OwnedByPulumi). With scaling
    (maxTasks > 1) the lower bound moves first: 1 to run, 0 to stop (`scaling`)."""
    service = service or describe_service(ecs, settings)
    if owner(ecs, service) == PULUMI_OWNS:
        raise OwnedByPulumi(settings)
    if settings.max_tasks > 1:
        if autoscaling is None:
            from .clients import client

            autoscaling = client("application-autoscaling")
        scaling.set_bounds(autoscaling, settings.cluster, settings.service, settings.max_tasks, running=count > 0)
    ecs.update_service(cluster=settings.cluster, service=settings.service, desiredCount=count)


def mark_woken(ecs, service: dict, now: float | None = None) -> None:
    """Record when the service was asked to start, so sleep leaves a fresh wake alone
    even before the task or its first metrics exist."""
    ecs.tag_resource(resourceArn=service["serviceArn"], tags=[{"key": WAKE_TAG, "value": str(int(now or time.time()))}])


def last_started(ecs, service: dict, tasks: list[dict]) -> float | None:
    """The newest sign that the service (re)started: a task created or started, a wake
    recorded by the control plane, a deployment updated."""
    moments = [_epoch(t.get(k)) for t in tasks for k in ("createdAt", "startedAt")]
    moments += [_epoch(d.get("updatedAt")) for d in service.get("deployments", [])]
    try:
        tags = ecs.list_tags_for_resource(resourceArn=service["serviceArn"]).get("tags", [])
        moments += [float(t["value"]) for t in tags if t.get("key") == WAKE_TAG and t.get("value", "").isdigit()]
    except Exception:  # tags are a hint; the task and deployment times still count
        pass
    known = [m for m in moments if m]
    return max(known) if known else None


def _epoch(value) -> float | None:
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return value.timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    return None
