"""Log observers for twistd: readable text for people, one JSON object a line for CloudWatch.

twistd builds its logger from the `logger` option after our options are parsed, so
the role's Options hand it one of these factories (see `taps.attach_logger`).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Callable

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
)
from zope.interface import implementer

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error, "critical": LogLevel.critical}


@implementer(ILogObserver)
class JsonLineObserver:
    """`{"time", "level", "logger", "message"}` plus a traceback when one was logged."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def __call__(self, event: dict) -> None:
        level = event.get("log_level")
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event.get("log_time", time.time()))) + "Z",
            "level": level.name if level is not None else "info",
            "logger": event.get("log_namespace", ""),
            "message": formatEvent(event),
        }
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()


def observer_factory(fmt: str, level: str, stream=None) -> Callable[[], ILogObserver]:
    def make() -> ILogObserver:
        out = stream or sys.stdout
        base = JsonLineObserver(out) if fmt == "json" else textFileLogObserver(out)
        predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
        return FilteringLogObserver(base, [predicate])

    return make


_chosen: dict[str, str] = {"format": "text", "level": "info"}


def choose(fmt: str, level: str) -> str:
    """Remember the format and level; returns the dotted name twistd's `logger` option wants."""
    _chosen.update(format=fmt, level=level)
    return f"{__name__}.configured_observer"


def configured_observer() -> ILogObserver:
    return observer_factory(_chosen["format"], _chosen["level"])()
