"""POST /kill: stop the server (desiredCount 0) and close its port to every waker."""

from __future__ import annotations

import json

from deployment import ecs_state, ingress
from deployment.clients import client
from deployment.settings import from_env

from .api import log, respond


def kill(event=None) -> tuple[int, dict]:
    settings = from_env()
    ecs, ec2 = client("ecs"), client("ec2")
    service = ecs_state.describe_service(ecs, settings)
    stopping = int(service.get("desiredCount", 0)) != 0
    if stopping:
        ecs_state.set_desired(ecs, settings, 0, service)
    closed = ingress.close_all(ec2, settings.ingress) if settings.ingress is not None else 0
    body = ecs_state.state(ecs, ec2, settings)
    body["ingressRulesRemoved"] = closed
    log.info(
        "kill decision: %s", json.dumps({"action": "stopped" if stopping else "none", "ingressRulesRemoved": closed})
    )
    return 200, body


def handler(event, context=None) -> dict:
    return respond(event, "POST", kill)
