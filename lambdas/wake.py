"""POST /wake: start the server (desiredCount 1) when it is stopped; idempotent."""

from __future__ import annotations

from . import ecs_state
from .api import respond
from .clients import client
from .settings import from_env


def wake() -> tuple[int, dict]:
    settings = from_env()
    ecs = client("ecs")
    service = ecs_state.describe_service(ecs, settings)
    if int(service.get("desiredCount", 0)) == 0:
        ecs_state.set_desired(ecs, settings, 1, service)
        try:
            ecs_state.mark_woken(ecs, service)
        except Exception:  # a missing tag only makes sleep rely on task times
            pass
    return 200, ecs_state.state(ecs, client("ec2"), settings)


def handler(event, context=None) -> dict:
    return respond(event, "POST", wake)
