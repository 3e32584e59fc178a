"""Fargate Spot, with on-demand when Spot has no room.

With `capacity: FARGATE_SPOT` the service asks for Spot tasks. When Spot has no capacity
ECS places no task at all (the service's events say "unable to place a task"), so a
server wanted for `SPOT_PATIENCE` with no task of its own is moved to on-demand FARGATE
(a new deployment, as ECS requires for a new strategy), and the answer and the decision
log say so. The service's `fluidity:capacity` tag records the move (`on-demand`), so it
happens once, and the next wake of a stopped server asks for Spot again. An interrupted Spot
task gets ECS's two-minute SIGTERM, which the server drains like any stop.
"""

from __future__ import annotations

import time

from deployment.settings import Settings

SPOT_PATIENCE = 120.0  # seconds with the server wanted and no task before on-demand
SPOT = [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]
ON_DEMAND = [{"capacityProvider": "FARGATE", "weight": 1}]


TAG = "fluidity:capacity"  # "on-demand" while the control plane has moved the service off Spot


def on_demand(service: dict) -> bool:
    return any(t.get("key") == TAG and t.get("value") == "on-demand" for t in service.get("tags") or [])


def _mark(ecs, service: dict, value: str) -> None:
    ecs.tag_resource(resourceArn=service["serviceArn"], tags=[{"key": TAG, "value": value}])


def _placement_trouble(service: dict) -> str:
    """ECS's newest word on why no task was placed, if it gave one."""
    for event in service.get("events") or []:
        message = str(event.get("message", ""))
        if "unable to place a task" in message:
            return message
    return ""


def fall_back_if_stuck(ecs, settings: Settings, service: dict, tasks: list[dict], since: float | None, now=None):
    """Move a Spot service that has placed no task for SPOT_PATIENCE to on-demand; returns
    what was done, in words, or None when nothing was."""
    now = time.time() if now is None else now
    if settings.capacity != "FARGATE_SPOT" or on_demand(service):
        return None
    if int(service.get("desiredCount", 0)) == 0 or since is None or now - since < SPOT_PATIENCE:
        return None
    if [t for t in tasks if t.get("lastStatus") != "STOPPED"]:
        return None
    ecs.update_service(
        cluster=settings.cluster, service=settings.service, capacityProviderStrategy=ON_DEMAND, forceNewDeployment=True
    )
    _mark(ecs, service, "on-demand")
    trouble = _placement_trouble(service)
    return (
        f"Fargate Spot placed no task in {round(now - since)}s"
        + (f" (ECS: {trouble})" if trouble else "")
        + ": running on demand (FARGATE) until the server next stops"
    )


def back_to_spot(ecs, settings: Settings, service: dict) -> bool:
    """A stopped server that fell back asks for Spot again before it starts."""
    if settings.capacity != "FARGATE_SPOT" or not on_demand(service):
        return False
    ecs.update_service(
        cluster=settings.cluster, service=settings.service, capacityProviderStrategy=SPOT, forceNewDeployment=True
    )
    _mark(ecs, service, "spot")
    return True
