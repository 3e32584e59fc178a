"""File descriptors: use what the system allows, and keep a reserve no peer can take.

A desktop session often starts processes with a soft `RLIMIT_NOFILE` of 1024 and a far
higher hard limit. Idle local connections (from any process on the laptop) or streams
through the server would otherwise use the last descriptor, and then `accept` fails for
everyone: `/health`, new proxy clients, the tunnel's own reconnect. So both roles raise
the soft limit at start and bound what peers may hold to the limit less a reserve.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from typing import Any

try:
    import resource
except ImportError:  # Windows: no such limit to raise
    resource = None  # type: ignore[assignment]

SELECT_LIMIT = 1024  # FD_SETSIZE: a select()-based reactor cannot watch descriptors past it


def raise_open_file_limit() -> int | None:
    """Soft limit up to the hard limit; returns the soft limit now in force (None: unknown)."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if sys.platform == "darwin":
        wanted = min(wanted, 10240)  # OPEN_MAX: macOS refuses more for an unprivileged process
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def capacity(reactor=None) -> int:
    """How many descriptors this process can use: the soft limit, and no more than a
    select()-based reactor can watch."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0] if resource is not None else 16384
    if soft == getattr(resource, "RLIM_INFINITY", -1):
        soft = 1 << 20
    if reactor is not None and "select" in type(reactor).__module__:
        soft = min(soft, SELECT_LIMIT)
    return soft


def reserve_for(total: int, wanted: int) -> int:
    """Descriptors kept back: `wanted`, but never more than a quarter of a small limit."""
    return max(16, min(wanted, total // 4))


class LocalConnections:
    """The agent's local client connections, bounded below the descriptor limit.

    A connection is idle until it has sent a complete request (and again between
    keep-alive requests). Idle ones are capped at half the budget, and when a new
    connection would pass either cap the oldest idle one is dropped for it; only when
    every connection is busy carrying data is a new one refused."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.idle_budget = max(1, budget // 2)
        self._idle: OrderedDict[Any, None] = OrderedDict()  # oldest first
        self.open = 0
        self.dropped = 0  # idle connections dropped to make room
        self.refused = 0

    def opened(self, transport) -> bool:
        """Count a new connection; False when it must be refused. Drops (aborts) the oldest
        idle connection when the new one would pass a cap."""
        if self.open >= self.budget or len(self._idle) >= self.idle_budget:
            if self._idle:
                oldest, _ = self._idle.popitem(last=False)
                self.dropped += 1
                oldest.abortConnection()  # it is still counted open until its connectionLost
            elif self.open >= self.budget:
                self.refused += 1
                return False
        self.open += 1
        self._idle[transport] = None
        return True

    def busy(self, transport) -> None:
        """It sent a complete request: no longer a candidate to drop."""
        self._idle.pop(transport, None)

    def idle(self, transport) -> None:
        if transport not in self._idle:
            self._idle[transport] = None

    def closed(self, transport) -> None:
        self._idle.pop(transport, None)
        self.open -= 1
