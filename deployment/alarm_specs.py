"""What the stack's monitoring declares, as plain data (no Pulumi): `infra/monitoring.py`
builds the resources from it and `fluidity cost` prices it, so the two cannot differ."""

from __future__ import annotations

from .metric_names import CONTROL_PLANE_ERRORS
from .stack_settings import StackSettings

PERIOD = 300  # seconds: the alarm looks at five-minute sums
# The Lambda Python runtime writes "[ERROR]" before log.error/exception lines and
# unhandled exceptions; the runtime itself reports timeouts and crashes.
LAMBDA_ERROR_PATTERN = '?"[ERROR]" ?"Task timed out" ?"Runtime exited"'
ACCESS_LOG_ERROR_PATTERN = '{ $.status = "5*" }'  # the stage's JSON access-log lines


def error_filters(s: StackSettings, roles: list[str]) -> list[dict]:
    """The metric filters that turn error lines into CONTROL_PLANE_ERRORS, as plain data:
    one per Lambda log group (by role) and one on the API's access log ("access")."""
    return [
        {"source": role, "pattern": LAMBDA_ERROR_PATTERN if role != "access" else ACCESS_LOG_ERROR_PATTERN}
        for role in [*roles, "access"]
    ]


def alarm_metrics(s: StackSettings) -> list[dict]:
    """The metrics the one alarm reads: what it costs is $0.10 for each (`fluidity cost`)."""
    return [
        {
            "id": "errors",
            "namespace": s.metrics_namespace,
            "metric": CONTROL_PLANE_ERRORS,
            "dimensions": {},  # a metric filter's dimensions can only be fields of the log line
        },
        {
            "id": "throttles",
            "namespace": "AWS/Lambda",
            "metric": "Throttles",
            "dimensions": {"FunctionName": f"{s.service_name}-sleep"},
        },
    ]


def dashboards(s: StackSettings) -> int:
    """How many dashboards the stack declares (`dashboard: true`, with monitoring)."""
    return int(s.control_plane and s.monitoring and s.dashboard)


def alarm_metric_count(s: StackSettings) -> int:
    """Alarm metrics the stack declares, which is what CloudWatch bills alarms by."""
    return len(alarm_metrics(s)) if s.control_plane and s.monitoring else 0
