"""EventBridge schedule: stop the server when nobody has used it for a while.

Idle means no agent connected at any point of the lookback window and the last
activity older than the threshold, where the last activity is the newest of the
server's `LastActivityEpochSeconds` and the moment the service last started. So a
server that just woke (no data points yet) is left alone, and one that never reports
is stopped once the threshold has passed since it started. The decision, with the
figures behind it, is logged and returned.
"""

from __future__ import annotations

import json
import time

from deployment import budget, ecs_state, ingress
from deployment.clients import client
from deployment.metric_names import ACTIVE_CONNECTIONS, LAST_ACTIVITY
from deployment.metric_reads import newest_maximum
from deployment.settings import Settings, SettingsError, from_env

from . import capacity
from .api import aws_reason, log


def decide(ecs, cloudwatch, settings: Settings, now: float, ec2=None) -> dict:
    """Look, decide, and act; returns the decision and its figures."""
    service = ecs_state.describe_service(ecs, settings)
    desired = int(service.get("desiredCount", 0))
    figures: dict[str, object] = {
        "desiredCount": desired,
        "idleThresholdSeconds": settings.idle_threshold_minutes * 60,
        "lookbackMinutes": settings.lookback_minutes,
    }
    if desired == 0:
        return {"action": "none", "reason": "already stopped", **figures}
    if ecs_state.owner(ecs, service) == ecs_state.PULUMI_OWNS:
        return {"action": "none", "reason": "desiredCount is set by the stack config (Pulumi owns it)", **figures}
    if settings.budget is not None:
        so_far = budget.month_so_far(cloudwatch, settings.namespace, settings.service, settings.budget, now)
        figures["budget"] = so_far
        if so_far["spent"]:
            return _stop(ecs, ec2, settings, service, budget.refusal(so_far), figures)
    tasks = ecs_state.service_tasks(ecs, settings)
    active = newest_maximum(cloudwatch, settings, ACTIVE_CONNECTIONS, now)
    reported = newest_maximum(cloudwatch, settings, LAST_ACTIVITY, now)
    started = ecs_state.last_started(ecs, service, tasks)
    fallback = capacity.fall_back_if_stuck(ecs, settings, service, tasks, started, now)
    if fallback:  # placing a task starts over: idle time counts from here
        return {"action": "on-demand", "reason": fallback, **figures}
    known = [m for m in (reported, started) if m is not None]
    last = max(known) if known else None
    figures.update(
        activeConnectionsMax=active,
        lastActivityEpochSeconds=reported,
        lastStartedEpochSeconds=started,
        idleSeconds=None if last is None else round(now - last),
    )
    if active is not None and active > 0:
        return {
            "action": "none",
            "reason": f"{int(active)} agent(s) connected within the last {settings.lookback_minutes:g} minutes",
            **figures,
        }
    if last is not None and now - last < settings.idle_threshold_minutes * 60:
        return {
            "action": "none",
            "reason": (
                f"active {round(now - last)}s ago, under the {settings.idle_threshold_minutes:g}-minute threshold"
            ),
            **figures,
        }
    why = "no activity or start time on record" if last is None else f"idle for {round(now - last)}s"
    return _stop(ecs, ec2, settings, service, why, figures)


def _stop(ecs, ec2, settings: Settings, service: dict, why: str, figures: dict) -> dict:
    ecs_state.set_desired(ecs, settings, 0, service)
    if settings.ingress is not None and ec2 is not None:
        figures["ingressRulesRemoved"] = ingress.close_all(ec2, settings.ingress)
    return {"action": "stopped", "reason": why, **figures}


def handler(event, context=None) -> dict:
    """Scheduled events carry nothing we need; any JSON object (a manual test) is accepted."""
    if not isinstance(event, dict):
        decision = {
            "action": "error",
            "reason": f"expected an EventBridge event (a JSON object), got {type(event).__name__}",
        }
    else:
        try:
            decision = decide(client("ecs"), client("cloudwatch"), from_env(), time.time(), client("ec2"))
        except (SettingsError, ecs_state.ServiceMissing) as e:
            decision = {"action": "error", "reason": str(e)}
        except Exception as e:
            from botocore.exceptions import BotoCoreError, ClientError

            if not isinstance(e, (ClientError, BotoCoreError)):
                log.exception("unexpected error")
                decision = {"action": "error", "reason": f"internal error: {type(e).__name__}"}
            else:
                decision = {"action": "error", "reason": aws_reason(e)}
    # An error decision is an error line, which the stack's alarm counts (infra/monitoring.py).
    (log.error if decision["action"] == "error" else log.info)("sleep decision: %s", json.dumps(decision))
    return decision
