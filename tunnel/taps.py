"""twistd entry points: `twistd fluidity-server` and `twistd fluidity-agent`.

Options are generated from the config schema, so every YAML key has a flag
(`--server-ip`, `--proxy-port`, `--metrics-namespace`, ...). Configuration and
certificates are checked while options are parsed: a mistake is one line on stderr
and a non-zero exit before anything listens.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.application import service
from twisted.application.internet import TimerService
from twisted.internet import ssl
from twisted.logger import Logger
from twisted.python import usage

from tunnel import config as cfg
from tunnel.agent.lifecycle import settings_from
from tunnel.agent.proxy_credentials import CredentialsError
from tunnel.agent.proxy_credentials import from_settings as proxy_credentials
from tunnel.agent.service import make_agent_service
from tunnel.agent.upstream import proxy_for
from tunnel.server.dialer import DirectOpener
from tunnel.server.egress import policy_from_strings
from tunnel.server.emf import EmfPublisher
from tunnel.server.metrics import MetricsPublisher, MetricsService
from tunnel.server.revocation import RevocationError, RevocationList
from tunnel.server.service import TunnelServer, tls_factory
from tunnel.wire import descriptors, eager_write, h2_speedups, logs
from tunnel.wire.listening import ListenService, tcp_endpoint
from tunnel.wire.tls import client_options, server_options

log = Logger(namespace="fluidity")


def _options_for(role: str, keys: tuple[cfg.Key, ...]):
    class Options(usage.Options):
        synopsis = f"[options]  (twistd -n fluidity-{role} --config configs/{role}.yaml)"
        default_config = cfg.default_agent_config() if role == "agent" else os.environ.get("FLUIDITY_CONFIG")
        where = "$FLUIDITY_CONFIG, else ~/.config/fluidity/agent.yaml" if role == "agent" else "$FLUIDITY_CONFIG"
        optParameters = [["config", "c", default_config, f"YAML config file (default: {where})"]] + [
            [k.flag, None, None, f"{k.help} [{k.name}, default {k.default!r}]"] for k in keys
        ]

        def opt_version(self) -> None:
            """Print Fluidity's version and exit."""
            from tunnel.ops.cli import _version

            print(f"fluidity-{role} {_version()}")
            raise SystemExit(0)

        def parseOptions(self, options=None) -> None:
            """A mistyped flag is one line with a suggestion, not the whole usage."""
            try:
                super().parseOptions(options)
            except usage.UsageError as e:
                raise SystemExit(
                    f"fluidity-{role}: {e}{_suggestion(str(e), ['--' + name.rstrip('=') for name in self.longOpt])} "
                    f"(see --help)"
                ) from None

        def postOptions(self) -> None:
            overrides = {k.name: self[k.flag] for k in keys if self[k.flag] is not None}
            if role == "server" and os.environ.get("FLUIDITY_LOG_LEVEL") and "log_level" not in overrides:
                overrides["log_level"] = os.environ["FLUIDITY_LOG_LEVEL"]
            try:
                self.config = cfg.load(keys, self["config"], overrides)
                self.egress_policy = self.revocations = None  # what the server builds from it, once
                self.validate(self.config)
                self.tls = server_options(self.config) if role == "server" else client_options(self.config)
            except cfg.ConfigError as e:
                raise SystemExit(f"fluidity-{role}: {e}") from None
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

        def validate(self, config: cfg.Settings) -> None:
            if role == "server":
                try:
                    self.egress_policy = policy_from_strings(config.egress_allow)
                except ValueError as e:
                    raise cfg.ConfigError(f"{config.source}: 'egress_allow': {e}") from None
                if config.metrics.emit_metrics:
                    _check_metrics(config)
                try:
                    self.revocations = RevocationList(config.revoked_file)
                except RevocationError as e:
                    raise cfg.ConfigError(f"{config.source}: {e}") from None
            else:
                if config.proxy_port == 0 and len(config.proxy_host) > 1:
                    raise cfg.ConfigError(
                        f"{config.source}: 'proxy_port: 0' (any free port) needs a single proxy_host, not "
                        f"{', '.join(config.proxy_host)}"
                    )
                if settings_from(config) is None and not config.server_ip:
                    if config.source == "defaults":  # no config file anywhere
                        home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
                        raise cfg.ConfigError(
                            f"no agent config: looked at $FLUIDITY_CONFIG (unset) and "
                            f"{os.path.join(home, 'fluidity', 'agent.yaml')} (missing). "
                            "Pass --config FILE, or copy configs/agent.yaml there and set server_ip (or a lifecycle "
                            "block)"
                        )
                    raise cfg.ConfigError(
                        f"{config.source}: 'server_ip' is required (or --server-ip), unless a lifecycle block finds "
                        f"the server"
                    )
                try:
                    if config.upstream_proxy.strip() != "auto":
                        proxy_for(config.upstream_proxy, config.server_ip)
                except ValueError as e:
                    where = "'upstream_proxy'" if config.upstream_proxy else "$HTTPS_PROXY"
                    raise cfg.ConfigError(f"{config.source}: {where}: {e}") from None
                try:
                    proxy_credentials(config)
                except CredentialsError as e:
                    raise cfg.ConfigError(f"{config.source}: {e}") from None
                if config.pac_url and config.upstream_proxy.strip() != "auto":
                    raise cfg.ConfigError(f"{config.source}: 'pac_url' is used only with upstream_proxy: auto")
                if config.upstream_proxy_ca:
                    try:
                        ssl.Certificate.loadPEM(Path(config.upstream_proxy_ca).read_bytes())
                    except Exception as e:  # unreadable, or pyOpenSSL's own error for bad PEM
                        raise cfg.ConfigError(
                            f"{config.source}: 'upstream_proxy_ca': cannot load {config.upstream_proxy_ca}: {e}"
                        ) from None

    Options.__name__ = f"{role.capitalize()}Options"
    return Options


def _suggestion(message: str, known: list[str]) -> str:
    """` (did you mean --x?)` for the option a usage error names, when one is close."""
    import difflib
    import re

    named = re.search(r"(--?[\w-]+)", message)
    if not named:
        return ""
    close = difflib.get_close_matches(named.group(1), known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _check_metrics(config: cfg.Settings) -> None:
    if config.metrics.metrics_interval < 1:
        raise cfg.ConfigError(f"{config.source}: 'metrics.metrics_interval' must be at least 1s")
    namespace = config.metrics.namespace
    if not namespace or namespace.startswith("AWS/") or len(namespace) > 255:
        raise cfg.ConfigError(f"{config.source}: 'metrics.namespace' must be 1-255 characters and not start with AWS/")
    if not config.metrics.service_name:
        raise cfg.ConfigError(f"{config.source}: 'metrics.service_name' must not be empty")
    if config.metrics.transport == "api":
        try:
            import boto3  # noqa: F401
        except ImportError:
            raise cfg.ConfigError(
                f"{config.source}: 'metrics.transport' api needs boto3 (pip install boto3, or pipx inject fluidity "
                f"boto3), or use emf"
            ) from None


REVOCATION_CHECK = 2.0  # seconds between looks at revoked_file


ServerOptions = _options_for("server", cfg.SERVER_KEYS)
AgentOptions = _options_for("agent", cfg.AGENT_KEYS)


class DrainOnStop(service.Service):
    """On shutdown (SIGTERM, Ctrl-C): GOAWAY-style drain of every agent, bounded in time."""

    def __init__(self, server: TunnelServer, timeout: float) -> None:
        self.server, self.timeout = server, timeout

    def stopService(self):
        super().stopService()
        return self.server.drain(self.timeout)


class ExitZeroOnRequestedStop(service.Service):
    """SIGTERM/SIGINT is how ECS, docker and Ctrl-C ask for a stop: once shutdown runs
    cleanly, exit 0 rather than re-raising the signal (twistd's default)."""

    def __init__(self, reactor) -> None:
        self.reactor = reactor

    def stopService(self):
        super().stopService()
        if hasattr(self.reactor, "_exitSignal"):
            self.reactor._exitSignal = None


def make_server_service(
    reactor, config: cfg.ServerSettings, tls, egress_policy, revocations: RevocationList
) -> service.MultiService:
    top = service.MultiService()
    ExitZeroOnRequestedStop(reactor).setServiceParent(top)
    opener = DirectOpener(reactor, egress_policy, config.dial_timeout)
    server = TunnelServer(
        reactor,
        opener,
        max_connections=config.max_connections,
        max_streams=config.max_streams,
        max_streams_per_agent=config.max_streams_per_agent,
        revocations=revocations,
        keepalive_interval=config.keepalive_interval,
        keepalive_timeout=config.keepalive_timeout,
        handshake_timeout=config.handshake_timeout,
        max_handshakes=config.max_handshakes,
        max_handshakes_per_source=config.max_handshakes_per_source,
    )
    endpoint = tcp_endpoint(reactor, config.host, config.port)
    ListenService(endpoint, tls_factory(tls, server), "tunnel (TLS)", config.host, config.port).setServiceParent(top)
    DrainOnStop(server, config.drain_timeout).setServiceParent(top)
    if config.revoked_file:
        TimerService(REVOCATION_CHECK, server.check_revocations).setServiceParent(top)
    if config.metrics.emit_metrics:
        interval = config.metrics.metrics_interval
        if config.metrics.transport == "emf":
            publisher = EmfPublisher(
                reactor, server, config.metrics.namespace, config.metrics.service_name, config.metrics.per_agent
            )
        else:
            publisher = MetricsPublisher(
                reactor,
                server,
                config.metrics.namespace,
                config.metrics.service_name,
                interval,
                per_agent=config.metrics.per_agent,
            )
        MetricsService(publisher, interval).setServiceParent(top)
    top.tunnel_server = server
    return top


def _use_the_descriptors_allowed() -> None:
    limit = descriptors.raise_open_file_limit()
    if limit is not None:
        log.info("open-file limit {n}", n=limit)


def _speed_up_writes() -> None:
    """The two guarded library patches, installed at start (never on import): each is a
    no-op, with a line in the log, where the library is not the one it was written for."""
    if not eager_write.install():
        log.warn("this Twisted's TCP transport is not the one eager writes were made for; using its own writes")
    if not h2_speedups.install():
        log.warn("this hyperframe's DATA frame repr is not the one the speed-up was made for; using its own")


def make_server(options) -> service.MultiService:
    from twisted.internet import reactor

    _speed_up_writes()
    _use_the_descriptors_allowed()
    return make_server_service(reactor, options.config, options.tls, options.egress_policy, options.revocations)


def make_agent(options) -> service.MultiService:
    from twisted.internet import reactor

    _speed_up_writes()
    _use_the_descriptors_allowed()
    top = make_agent_service(reactor, options.config, options.tls)
    ExitZeroOnRequestedStop(reactor).setServiceParent(top)
    return top
