"""What a refusal is, and which HTTP statuses keep their meaning across the tunnel.

An opener that cannot reach a destination fails with `OpenFailed`, whose `status` is in
HTTP's words. The tunnel's core and the agent's HTTP front both pass a refusal on with
`http_status`; SOCKS has its own words (`socks.reply_for_status`). Plain Python, so the
sans-IO core can carry it without importing Twisted.
"""

from __future__ import annotations

__all__ = ["PASSED_ON", "OpenFailed", "http_status"]


class OpenFailed(Exception):
    """The destination cannot be reached: `status` is the HTTP status a front passes on."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


# Statuses that keep their meaning across the tunnel and the agent's HTTP front: bad
# request, refused by policy, method not allowed, rate limited, unreachable, unavailable,
# timed out. Anything else (a server bug, an unknown code) becomes a 502.
PASSED_ON = frozenset({400, 403, 405, 429, 502, 503, 504})


def http_status(status: int) -> int:
    """The status an HTTP front answers for a refusal of `status`."""
    return status if status in PASSED_ON else 502
