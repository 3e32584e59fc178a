"""GET /status: what the server is doing and where it is, and the caller's address as the
API sees it (`callerIp`: what `fluidity start` opens the port to)."""

from __future__ import annotations

from deployment import ecs_state, ingress
from deployment.clients import client
from deployment.settings import from_env

from .api import respond


def status(event) -> tuple[int, dict]:
    body = ecs_state.state(client("ecs"), client("ec2"), from_env())
    body["callerIp"] = ingress.source_ipv4(event)
    return 200, body


def handler(event, context=None) -> dict:
    return respond(event, "GET", status)
