"""Streams that stopped moving, said in the log within a minute (issue 44).

A stream whose end was lost (every byte delivered, the FIN never sent) just sat there for
as long as the tunnel lived, and nothing said so: it took days to see. So the mux's
keepalive timer, which runs every keepalive interval while the tunnel connection is alive,
asks `StallWatch` which streams have not moved for `STALL_AFTER` seconds (no byte sent or
received, no end either way), and logs each one once, at debug level, with where its bytes
wait: the windows, what is queued on either side, which producers are paused and whether
its socket's write side is closing. An idle interactive session is such a stream too, hence
debug. Nothing here runs per byte: one comparison per stream per tick.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from tunnel.wire.endings import undelivered

__all__ = ["STALL_AFTER", "StallWatch", "socket_side"]

STALL_AFTER = 30.0  # seconds without progress before a stream is said to have stalled


class StallWatch:
    """Remembers each stream's progress mark and since when it has not changed."""

    def __init__(self, after: float = STALL_AFTER) -> None:
        self.after = after
        self._marks: dict[int, tuple[Hashable, float, bool]] = {}  # sid: (mark, unchanged since, told)

    def check(self, now: float, marks: Mapping[int, Hashable]) -> list[tuple[int, float]]:
        """`marks`: every open stream's progress mark (anything that changes when it moves).
        Returns (stream id, seconds without progress) for each stream that has just passed
        `after` seconds unchanged: once per stall, again only after it moved."""
        stalled: list[tuple[int, float]] = []
        kept: dict[int, tuple[Hashable, float, bool]] = {}
        for sid, mark in marks.items():
            before = self._marks.get(sid)
            if before is None or before[0] != mark:
                kept[sid] = (mark, now, False)
                continue
            _, since, told = before
            if not told and now - since >= self.after:
                stalled.append((sid, now - since))
                told = True
            kept[sid] = (mark, since, told)
        self._marks = kept  # streams gone since the last check are forgotten
        return stalled


def socket_side(transport: Any) -> str:
    """The state of a relayed socket (or TLS) transport, as far as it shows: what it still
    holds for its peer, whether its producer (the stream) is paused, whether it is ending."""
    if transport is None or not hasattr(transport, "write"):
        return "none"
    flags = [
        name
        for name, attribute in (
            ("write side closing", "_writeDisconnecting"),
            ("write side closed", "_writeDisconnected"),
            ("closing", "disconnecting"),
        )
        if getattr(transport, attribute, False)
    ]
    if getattr(transport, "producer", None) is not None:  # Twisted keeps producerPaused after it goes
        paused = getattr(transport, "producerPaused", False)
        flags.insert(0, "its producer paused" if paused else "its producer running")
    if not getattr(transport, "connected", True):
        flags.append("gone")
    return f"{undelivered(transport)} B not yet delivered" + "".join(f", {flag}" for flag in flags)
