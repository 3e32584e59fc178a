"""`twistd fluidity-agent`: the module ServiceMaker points at (its Options and makeService)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import ssl

from tunnel import config as cfg
from tunnel.agent.lifecycle import settings_from
from tunnel.agent.proxy_credentials import CredentialsError
from tunnel.agent.proxy_credentials import from_settings as proxy_credentials
from tunnel.agent.service import make_agent_service
from tunnel.agent.upstream import proxy_for
from tunnel.taps import ExitZeroOnRequestedStop, RoleOptions, prepare_process
from tunnel.wire.tls import client_options

__all__ = ["Options", "makeService"]


class Options(RoleOptions):
    schema = cfg.AGENT_KEYS
    config_help = "$FLUIDITY_CONFIG, else ~/.config/fluidity/agent.yaml"

    @classmethod
    def default_config(cls) -> str | None:
        return cfg.default_agent_config()

    def validate(self, config: cfg.AgentSettings) -> None:
        if config.proxy_port == 0 and len(config.proxy_host) > 1:
            raise cfg.ConfigError(
                f"{config.source}: 'proxy_port: 0' (any free port) needs a single proxy_host, not "
                f"{', '.join(config.proxy_host)}"
            )
        if settings_from(config) is None and not config.server_ip:
            raise cfg.ConfigError(_no_server(config))
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

    def tls_options(self, config: cfg.AgentSettings) -> Any:
        return client_options(config)


def _no_server(config: cfg.AgentSettings) -> str:
    """Neither a server address nor a lifecycle block: say where we looked."""
    if config.source == "defaults":  # no config file anywhere
        home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
        return (
            f"no agent config: looked at $FLUIDITY_CONFIG (unset) and "
            f"{os.path.join(home, 'fluidity', 'agent.yaml')} (missing). "
            "Pass --config FILE, or copy configs/agent.yaml there and set server_ip (or a lifecycle block)"
        )
    return f"{config.source}: 'server_ip' is required (or --server-ip), unless a lifecycle block finds the server"


def makeService(options: Options) -> service.MultiService:
    from twisted.internet import reactor

    prepare_process()
    top = make_agent_service(reactor, options.config, options.tls)
    ExitZeroOnRequestedStop(reactor).setServiceParent(top)
    return top
