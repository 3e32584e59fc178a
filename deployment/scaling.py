"""maxTasks > 1: who sets the number of tasks, and when.

Application Auto Scaling tracks the tasks' average CPU between a lower and an upper
bound; the control plane owns the lower one. Waking sets it to 1 (the server runs, at
least one task), stopping to 0 before desiredCount goes to 0, so scaling never holds a
stopped server up nor brings a running one down to nothing. The upper bound is the
stack's maxTasks.
"""

from __future__ import annotations

DIMENSION = "ecs:service:DesiredCount"


def resource_id(cluster: str, service: str) -> str:
    return f"service/{cluster}/{service}"


def set_bounds(autoscaling, cluster: str, service: str, max_tasks: int, running: bool) -> None:
    autoscaling.register_scalable_target(
        ServiceNamespace="ecs",
        ResourceId=resource_id(cluster, service),
        ScalableDimension=DIMENSION,
        MinCapacity=1 if running else 0,
        MaxCapacity=max_tasks,
    )


def max_tasks_of(autoscaling, cluster: str, service: str) -> int:
    """The registered upper bound (1 when the service is not scaled): for callers without the stack's settings."""
    answer = autoscaling.describe_scalable_targets(
        ServiceNamespace="ecs", ResourceIds=[resource_id(cluster, service)], ScalableDimension=DIMENSION
    )
    targets = answer.get("ScalableTargets", [])
    return int(targets[0]["MaxCapacity"]) if targets else 1
