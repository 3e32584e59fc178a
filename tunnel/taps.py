"""What both twistd roles share: `twistd fluidity-server` (tunnel/taps_server.py) and
`twistd fluidity-agent` (tunnel/taps_agent.py) each subclass `RoleOptions`.

Options are generated from the config schema, so every YAML key has a flag
(`--server-ip`, `--proxy-port`, `--metrics-namespace`, ...). Configuration and
certificates are checked while options are parsed: a mistake is one line on stderr
and a non-zero exit before anything listens.
"""

from __future__ import annotations

import os
import signal
from typing import Any, ClassVar

from twisted.application import service
from twisted.internet import error
from twisted.logger import Logger
from twisted.python import usage

from tunnel import config as cfg
from tunnel.redaction import redact
from tunnel.wire import descriptors, heap, logs, patches

log = Logger(namespace="fluidity")


class RoleOptions(usage.Options):
    """One role's command line: `--config` and a flag for each of the role's settings.
    A subclass names its `schema` (its role comes with it) and says how it checks what was read."""

    role: ClassVar[str]
    schema: ClassVar[cfg.Schema]  # not `keys`: Options is a dict
    config_help: ClassVar[str] = "$FLUIDITY_CONFIG"
    synopsis: ClassVar[str]
    optParameters: ClassVar[list[list[Any]]]

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls.role = cls.schema.role
        cls.synopsis = f"[options]  (twistd -n fluidity-{cls.role} --config configs/{cls.role}.yaml)"
        cls.optParameters = [["config", "c", cls.default_config(), f"YAML config file (default: {cls.config_help})"]]
        cls.optParameters += [[k.flag, None, None, f"{k.help} [{k.name}, default {k.default!r}]"] for k in cls.schema]

    @classmethod
    def default_config(cls) -> str | None:
        return os.environ.get("FLUIDITY_CONFIG")

    def opt_version(self) -> None:
        """Print Fluidity's version and exit."""
        from tunnel.ops.cli_parser import _version

        print(f"fluidity-{self.role} {_version()}")
        raise SystemExit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """A mistyped flag is one line with a suggestion, not the whole usage."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            known = ["--" + name.rstrip("=") for name in self.longOpt]
            raise SystemExit(f"fluidity-{self.role}: {e}{_suggestion(str(e), known)} (see --help)") from None

    def overrides(self) -> dict[str, Any]:
        """The settings given as flags, by name."""
        return {k.name: self[k.flag] for k in self.schema if self[k.flag] is not None}

    def postOptions(self) -> None:
        try:
            self.config = cfg.load(self.schema, self["config"], self.overrides())
            self.validate(self.config)
            self.tls = self.tls_options(self.config)
        except cfg.ConfigError as e:
            raise SystemExit(f"fluidity-{self.role}: {redact(str(e))}") from None
        parent = getattr(self, "parent", None)
        if parent is not None:  # twistd reads its `logger` option after ours are parsed
            # Our observer replaces twistd's, so it honours --logfile itself; a daemon
            # without one writes where twistd would, twistd.log (before: nowhere).
            logfile = parent.get("logfile")
            if logfile in (None, "-") and not parent.get("nodaemon"):
                logfile = "twistd.log"
            parent["logger"] = logs.choose(
                self.config.log_format, self.config.log_level, None if logfile in (None, "-") else logfile
            )

    def validate(self, config: Any) -> None:
        """Raise cfg.ConfigError for what the schema alone cannot check."""
        raise NotImplementedError

    def tls_options(self, config: Any) -> Any:
        raise NotImplementedError


def _suggestion(message: str, known: list[str]) -> str:
    """` (did you mean --x?)` for the option a usage error names, when one is close."""
    import difflib
    import re

    named = re.search(r"(--?[\w-]+)", message)
    if not named:
        return ""
    close = difflib.get_close_matches(named.group(1), known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGBREAK") if hasattr(signal, name))


class ExitZeroOnRequestedStop(service.Service):
    """SIGTERM/SIGINT is how ECS, docker and Ctrl-C ask for a stop: the reactor stops
    cleanly and the process exits 0, rather than re-raising the signal (twistd's default
    when its own handler saw it). Our handler goes in once the reactor runs, after
    Twisted's, and only stops the reactor: twistd then has no signal to re-raise."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def startService(self) -> None:
        super().startService()
        self.reactor.callWhenRunning(self._take_stop_signals)

    def _take_stop_signals(self) -> None:
        for number in STOP_SIGNALS:
            if signal.getsignal(number) not in (signal.SIG_IGN, signal.SIG_DFL, None):  # as Twisted left it
                signal.signal(number, self._requested_stop)

    def _requested_stop(self, number: int, frame: object) -> None:
        self.reactor.callFromThread(self._stop, number)  # all else in the reactor, not the handler

    def _stop(self, number: int) -> None:
        log.info("Received {name}, shutting down.", name=signal.Signals(number).name)
        try:
            self.reactor.stop()
        except error.ReactorNotRunning:  # a second signal while stopping changes nothing
            pass


def use_the_descriptors_allowed() -> None:
    limit = descriptors.raise_open_file_limit()
    if limit is not None:
        log.info("open-file limit {n}", n=limit)


SPEEDUPS_OFF = patches.OFF_SWITCH


def _speed_up_writes() -> None:
    """The library patches (tunnel/wire/patches.py), installed at start (never on import): each
    is left off, with its reason in the log, where the library is not the one it was written for."""
    if os.environ.get(SPEEDUPS_OFF) == "off":
        patches.registry().remove_all(f"{SPEEDUPS_OFF}=off")
        log.info("{name}=off: Twisted, h2 and hyperframe run as shipped", name=SPEEDUPS_OFF)
        return
    registry = patches.registry()
    registry.install_all()
    for line in registry.report():
        log.info("library patch: {line}", line=line)


def prepare_process() -> None:
    """What every role does before building its services."""
    _speed_up_writes()
    log.info("heap: {what}", what=heap.keep_freed_memory())
    use_the_descriptors_allowed()
