"""API Gateway proxy events in, proxy responses out; nothing raises past `respond`.

Accepts REST API (v1) and HTTP API (v2) proxy events. Every failure is an answer: 400
for a malformed event, 405 for a wrong method, 502 when AWS refuses or fails, 500 for a
misconfigured function.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable

from deployment.ecs_state import OwnedByPulumi, ServiceMissing
from deployment.settings import SettingsError

log = logging.getLogger("fluidity.lambdas")
log.setLevel(logging.INFO)


class BadEvent(ValueError):
    """The event is not an API Gateway proxy request this function can serve."""


def method_of(event) -> str:
    if not isinstance(event, dict):
        raise BadEvent(f"expected an API Gateway proxy event (a JSON object), got {type(event).__name__}")
    method = event.get("httpMethod")
    if method is None:
        method = (
            ((event.get("requestContext") or {}).get("http") or {}).get("method")
            if isinstance(event.get("requestContext"), dict)
            else None
        )
    if not isinstance(method, str) or not method:
        raise BadEvent("not an API Gateway proxy event: no httpMethod")
    headers = event.get("headers")
    if headers is not None and not isinstance(headers, dict):
        raise BadEvent("headers must be an object")
    body_of(event)
    return method.upper()


def body_of(event: dict) -> dict:
    """An optional JSON object body (after base64 when the event says so)."""
    body = event.get("body")
    if body in (None, ""):
        return {}
    if not isinstance(body, str):
        raise BadEvent("body must be a string")
    if event.get("isBase64Encoded"):
        try:
            body = base64.b64decode(body, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise BadEvent("body is marked base64 but is not valid base64 UTF-8") from None
    try:
        parsed = json.loads(body)
    except ValueError:
        raise BadEvent("body must be JSON") from None
    if not isinstance(parsed, dict):
        raise BadEvent("body must be a JSON object")
    return parsed


def response(status: int, body: dict, headers: dict | None = None) -> dict:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json", "Cache-Control": "no-store", **(headers or {})},
        "body": json.dumps(body),
    }


def error(status: int, reason: str, headers: dict | None = None) -> dict:
    return response(status, {"error": reason}, headers)


def aws_reason(e: Exception) -> str:
    """`ECS UpdateService: AccessDeniedException: ...` from a botocore error."""
    from botocore.exceptions import ClientError

    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        operation = getattr(e, "operation_name", "call")
        return f"{operation} failed: {err.get('Code', 'Error')}: {err.get('Message', '')}".strip()
    return f"{type(e).__name__}: {e}"


def respond(event, allowed: str, action: Callable[..., tuple[int, dict]]) -> dict:
    """Check the event, run `action(event)` (which talks to AWS), map every failure to an answer."""
    try:
        method = method_of(event)
    except BadEvent as e:
        return error(400, str(e))
    if method != allowed:
        return error(405, f"use {allowed}", {"Allow": allowed})
    try:
        status, body = action(event)
        return response(status, body)
    except SettingsError as e:
        log.error("misconfigured: %s", e)
        return error(500, f"control plane misconfigured: {e}")
    except ServiceMissing as e:
        return error(502, str(e))
    except OwnedByPulumi as e:
        return error(409, str(e))
    except Exception as e:
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(e, (ClientError, BotoCoreError)):
            reason = aws_reason(e)
            log.error("AWS error: %s", reason)  # an error line: the alarm counts it
            return error(502, reason)
        log.exception("unexpected error")
        return error(500, "internal error (see the function's logs)")
