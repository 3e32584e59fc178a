"""POST /kill: stop the server (desiredCount 0)."""

from __future__ import annotations

from . import ecs_state
from .api import respond
from .clients import client
from .settings import from_env


def kill() -> tuple[int, dict]:
    settings = from_env()
    ecs = client("ecs")
    service = ecs_state.describe_service(ecs, settings)
    if int(service.get("desiredCount", 0)) != 0:
        ecs_state.set_desired(ecs, settings, 0, service)
    return 200, ecs_state.state(ecs, client("ec2"), settings)


def handler(event, context=None) -> dict:
    return respond(event, "POST", kill)
