"""The budget for connections that have not finished their TLS handshake.

The listener is on the public internet: anyone can open a TCP connection before any
certificate is checked. Those connections must never take the places of agents, so
they are kept apart from `max_connections` (which counts only authenticated agents)
and bounded on their own, in total and per source address. When a new connection
finds the budget full, the *oldest* unauthenticated connection makes room: first one
that has not sent a byte (a bare connect costs an attacker nothing and is what a flood
is made of), then one stuck mid-handshake. The newcomer is always admitted, so an
agent that connects during a flood gets its handshake's round trip before it could be
displaced, and a flood of bare connects can never displace a client that speaks TLS.

Pure bookkeeping, no I/O: `admit` returns the connections to drop and the caller
aborts them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

C = TypeVar("C", bound=Hashable)  # a pending connection


class _Queues(Generic[C]):
    """Pending connections in arrival order: silent ones, and those that have spoken."""

    def __init__(self) -> None:
        self.silent: OrderedDict[C, None] = OrderedDict()
        self.spoken: OrderedDict[C, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self.silent) + len(self.spoken)

    def oldest(self) -> C:
        return next(iter(self.silent or self.spoken))

    def discard(self, item: C) -> None:
        self.silent.pop(item, None)
        self.spoken.pop(item, None)


class HandshakeBudget(Generic[C]):
    """At most `total` unauthenticated connections, and `per_source` from one address."""

    def __init__(self, total: int, per_source: int) -> None:
        self.total = total
        self.per_source = per_source
        self._all: _Queues[C] = _Queues()
        self._by_source: dict[str, _Queues[C]] = {}
        self._source_of: dict[C, str] = {}
        self.evicted = 0  # how many were dropped to make room, for the log and tests

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, connection: C) -> bool:
        return connection in self._source_of

    def admit(self, connection: C, source: str, spoken_meanwhile: Callable[[C], bool] | None = None) -> list[C]:
        """Count a new connection in; return the older ones that must go to make room.

        `spoken_meanwhile(c)` says whether a connection counted as silent has bytes waiting
        that nobody has read yet: connections accepted in one batch are all silent until the
        reactor reads them, and a real client's ClientHello is already there. Such a one is
        counted as having spoken instead of being dropped."""
        victims: list[C] = []
        mine = self._by_source.get(source)
        if mine is not None and len(mine) >= self.per_source:
            victims.append(self._oldest(mine, spoken_meanwhile))
            self.forget(victims[-1])
        if len(self._all) >= self.total:
            victims.append(self._oldest(self._all, spoken_meanwhile))
            self.forget(victims[-1])
        self._source_of[connection] = source
        self._all.silent[connection] = None
        self._by_source.setdefault(source, _Queues()).silent[connection] = None
        self.evicted += len(victims)
        return victims

    def _oldest(self, queues: _Queues[C], spoken_meanwhile: Callable[[C], bool] | None) -> C:
        while queues.silent and spoken_meanwhile is not None:
            candidate = next(iter(queues.silent))
            if not spoken_meanwhile(candidate):
                return candidate
            self.spoke(candidate)
        return queues.oldest()

    def spoke(self, connection: C) -> None:
        """The peer sent its first bytes: it is doing a handshake, not just holding a socket."""
        source = self._source_of.get(connection)
        if source is None or connection not in self._all.silent:
            return
        for queues in (self._all, self._by_source[source]):
            del queues.silent[connection]
            queues.spoken[connection] = None

    def forget(self, connection: C) -> None:
        """The handshake finished, or the connection is gone."""
        source = self._source_of.pop(connection, None)
        if source is None:
            return
        self._all.discard(connection)
        mine = self._by_source[source]
        mine.discard(connection)
        if not mine:
            del self._by_source[source]
