"""GET /status: what the server is doing and where it is."""

from __future__ import annotations

from . import ecs_state
from .api import respond
from .clients import client
from .settings import from_env


def status() -> tuple[int, dict]:
    return 200, ecs_state.state(client("ecs"), client("ec2"), from_env())


def handler(event, context=None) -> dict:
    return respond(event, "GET", status)
