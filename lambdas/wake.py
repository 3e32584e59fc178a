"""POST /wake: start the server (desiredCount 1) when it is stopped, and open its port to
the caller's address; idempotent. With a monthly budget spent it starts nothing and
answers 402 with the reason (`budget.refusal`), which the agent shows its clients."""

from __future__ import annotations

import json
import time

from deployment import budget, ecs_state, ingress
from deployment.clients import client
from deployment.settings import from_env

from . import capacity
from .api import log, respond


def wake(event, now: float | None = None) -> tuple[int, dict]:
    now = time.time() if now is None else now
    settings = from_env()
    if settings.budget is not None:
        so_far = budget.month_so_far(client("cloudwatch"), settings.namespace, settings.service, settings.budget, now)
        if so_far["spent"]:
            log.info("wake decision: %s", json.dumps({"action": "refused", "budget": so_far}))
            return 402, {"error": budget.refusal(so_far), "budget": so_far}
    ecs, ec2 = client("ecs"), client("ec2")
    service = ecs_state.describe_service(ecs, settings)
    started = int(service.get("desiredCount", 0)) == 0
    fallback = None
    if started:
        capacity.back_to_spot(ecs, settings, service)
        ecs_state.set_desired(ecs, settings, 1, service)
        try:
            ecs_state.mark_woken(ecs, service)
        except Exception:  # a missing tag only makes sleep rely on task times
            pass
    else:  # wanted already: has Spot placed its task?
        tasks = ecs_state.service_tasks(ecs, settings)
        since = ecs_state.last_started(ecs, service, tasks)
        fallback = capacity.fall_back_if_stuck(ecs, settings, service, tasks, since, now)
    opened = None
    if settings.ingress is not None:
        caller = ingress.source_ipv4(event)
        if caller is None:
            log.warning("wake: no public IPv4 source address in the event; the port was not opened to the caller")
        else:
            opened = ingress.allow(ec2, settings.ingress, caller, now)
            log.info(
                "wake: port %d open to %s (%d stale rule(s) pruned)",
                settings.ingress.port,
                opened["allowed"],
                opened["pruned"],
            )
    body = ecs_state.state(ecs, ec2, settings)
    body["ingress"] = opened["allowed"] if opened else None
    body["callerIp"] = ingress.source_ipv4(event)
    body["capacity"] = fallback
    action = "started" if started else "on-demand" if fallback else "none"
    log.info(
        "wake decision: %s",
        json.dumps({"action": action, "status": body["status"], "ingress": body["ingress"], "capacity": fallback}),
    )
    return 200, body


def handler(event, context=None) -> dict:
    return respond(event, "POST", wake)
