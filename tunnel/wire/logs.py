"""Log observers for twistd: readable text for people, one JSON object a line for CloudWatch.

twistd builds its logger from the `logger` option after our options are parsed, so
the role's Options hand it one of these factories (see `_options_for` in `taps.py`).
`Throttle` keeps a peer that repeats one refused request from writing a line each time.
"""

from __future__ import annotations

import json
import os
import re
import string
import sys
import time
from collections.abc import Callable
from typing import Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatEventAsClassicLogText,
)
from zope.interface import implementer

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}


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


# What a terminal acts on: C0 controls (CR rewrites the line, ESC starts a sequence), DEL,
# C1 controls (0x9b is a one-byte CSI), and the Unicode line and paragraph separators.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape(text: str) -> str:
    """Control characters as visible escapes (`\\r`, `\\x1b`, `\\u2028`), the rest unchanged."""
    return _UNSAFE.sub(_escaped, text)


def _escaped(match: re.Match) -> str:
    c = match.group()
    return {"\r": "\\r", "\n": "\\n", "\t": "\\t"}.get(c) or (
        f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
    )


class _EscapingFormatter(string.Formatter):
    """Formats a log line's fields, each escaped: a peer's header value is one of them."""

    def format_field(self, value, format_spec: str) -> str:
        return escape(super().format_field(value, format_spec))


_formatter = _EscapingFormatter()


def safe_text(event: dict) -> str:
    """The event's message with every interpolated field escaped, and its traceback (whose
    exception messages may quote a peer too) escaped line by line."""
    fmt = event.get("log_format")
    try:
        text = _formatter.vformat(fmt, (), event) if fmt is not None else escape(formatEvent(event))
    except Exception:  # a field it cannot format: Twisted's own text, escaped whole
        text = escape(formatEvent(event))
    failure = event.get("log_failure")
    if failure is not None:
        try:
            trace = failure.getTraceback()
        except Exception:
            trace = "(the traceback could not be formatted)"
        text += "\n" + "\n".join(escape(line) for line in trace.rstrip("\n").split("\n"))
    return text


def _classic_safe_text(event: dict) -> str | None:
    shown = {k: v for k, v in event.items() if k not in ("log_failure", "log_format", "log_text", "message")}
    shown["log_format"] = "{fluidity_text}"
    shown["fluidity_text"] = safe_text(event)
    return formatEventAsClassicLogText(shown)


def text_observer(out) -> ILogObserver:
    """Twisted's classic text lines, with what a peer controls unable to forge or rewrite one."""
    return FileLogObserver(out, _classic_safe_text)


def observer_factory(fmt: str, level: str, stream=None) -> Callable[[], ILogObserver]:
    def make() -> ILogObserver:
        out = stream or sys.stdout
        base = JsonLineObserver(out) if fmt == "json" else text_observer(out)
        predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
        return FilteringLogObserver(base, [predicate])

    return make


_chosen: dict[str, str | None] = {"format": "text", "level": "info", "path": None}


def choose(fmt: str, level: str, path: str | None = None) -> str:
    """Remember the format, level and file (None: stdout); returns the dotted name twistd's
    `logger` option wants."""
    _chosen.update(format=fmt, level=level, path=os.path.abspath(path) if path else None)
    return f"{__name__}.configured_observer"


def configured_observer() -> ILogObserver:
    """Made before twistd daemonises: the file stays open (and relative paths mean what
    they meant) after it does."""
    path = _chosen["path"]
    stream = open(path, "a", buffering=1, encoding="utf-8") if path else None  # noqa: SIM115 (the log's, for the process's life)
    return observer_factory(_chosen["format"] or "text", _chosen["level"] or "info", stream)()


class Throttle:
    """At most `burst` lines per `window` seconds for each kind of repeated event.

    A peer can ask for a refused destination thousands of times a second; each refusal
    is one line only while they are few. Past that they are counted, and the count rides
    on the next line let through (`suppressed`), so nothing is silently lost."""

    def __init__(self, burst: int = 20, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.window, self.clock = burst, window, clock
        self._windows: dict[str, tuple[float, int, int]] = {}  # key -> (start, lines, suppressed)

    def __call__(self, key: str) -> int | None:
        """None: do not log this one. Otherwise log it, noting the number suppressed before it."""
        now = self.clock()
        start, lines, suppressed = self._windows.get(key, (now, 0, 0))
        if now - start >= self.window:
            start, lines = now, 0
        if lines >= self.burst:
            self._windows[key] = (start, lines, suppressed + 1)
            return None
        self._windows[key] = (start, lines + 1, 0)
        if len(self._windows) > 1024:  # keys are few in practice; never let them grow without bound
            self._windows = {key: self._windows[key]}
        return suppressed

    def log(self, emit: Callable[..., None], key: str, text: str, **fields: Any) -> None:
        """`emit(text)` (a Logger's warn, info, ...) unless `key` is over its budget; the count
        of lines held back before it rides on its end."""
        suppressed = self(key)
        if suppressed is not None:
            emit(text + "{more}", more=more(suppressed), **fields)


def more(suppressed: int) -> str:
    """The tail a throttled line carries."""
    return f" ({suppressed} more like it not logged)" if suppressed else ""
