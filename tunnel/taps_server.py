"""`twistd fluidity-server`: the module ServiceMaker points at (its Options and makeService)."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.application.internet import TimerService

from tunnel import config as cfg
from tunnel.server.dialer import DirectOpener
from tunnel.server.egress import policy_from_strings
from tunnel.server.emf import EmfPublisher
from tunnel.server.metrics import MetricsPublisher, MetricsService, Publisher
from tunnel.server.revocation import RevocationError, RevocationList
from tunnel.server.service import TunnelServer, tls_factory
from tunnel.taps import ExitZeroOnRequestedStop, RoleOptions, prepare_process
from tunnel.wire.listening import ListenService, tcp_endpoint
from tunnel.wire.tls import server_options

__all__ = ["Options", "makeService"]

REVOCATION_CHECK = 2.0  # seconds between looks at revoked_file


class Options(RoleOptions):
    schema = cfg.SERVER_KEYS

    def overrides(self) -> dict[str, Any]:
        import os

        given = super().overrides()
        if os.environ.get("FLUIDITY_LOG_LEVEL") and "log_level" not in given:
            given["log_level"] = os.environ["FLUIDITY_LOG_LEVEL"]
        return given

    def validate(self, config: cfg.ServerSettings) -> None:
        """Builds, once, the egress policy and the revocation list the server runs with."""
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

    def tls_options(self, config: cfg.ServerSettings) -> Any:
        return server_options(config)


def _check_metrics(config: cfg.ServerSettings) -> None:
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


class DrainOnStop(service.Service):
    """On shutdown (SIGTERM, Ctrl-C): GOAWAY-style drain of every agent, bounded in time."""

    def __init__(self, server: TunnelServer, timeout: float) -> None:
        self.server, self.timeout = server, timeout

    def stopService(self):
        super().stopService()
        return self.server.drain(self.timeout)


def make_server_service(
    reactor, config: cfg.ServerSettings, tls, egress_policy, revocations: RevocationList
) -> service.MultiService:
    top = service.MultiService()
    ExitZeroOnRequestedStop(reactor).setServiceParent(top)
    opener = DirectOpener(reactor, egress_policy, config.dial_timeout)
    server = TunnelServer(reactor, opener, config, revocations)
    endpoint = tcp_endpoint(reactor, config.host, config.port)
    ListenService(endpoint, tls_factory(tls, server), "tunnel (TLS)", config.host, config.port).setServiceParent(top)
    DrainOnStop(server, config.drain_timeout).setServiceParent(top)
    if config.revoked_file:
        TimerService(REVOCATION_CHECK, server.check_revocations).setServiceParent(top)
    if config.metrics.emit_metrics:
        interval = config.metrics.metrics_interval
        publisher: Publisher
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
    return top


def makeService(options: Options) -> service.MultiService:
    from twisted.internet import reactor

    prepare_process()
    assert isinstance(options.config, cfg.ServerSettings)  # Options loads SERVER_KEYS
    return make_server_service(reactor, options.config, options.tls, options.egress_policy, options.revocations)
