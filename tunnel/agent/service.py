"""The agent: the local proxy listener plus the tunnel client, and what `/health` reports."""

from __future__ import annotations

import ipaddress
import secrets

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from tunnel.agent.http_front import ProxySite
from tunnel.agent.lifecycle import KILL_TIMEOUT, ControlPlaneClient, ServerLocator, settings_from
from tunnel.agent.pac import pac_file
from tunnel.agent.proxy_choice import ProxyChoice
from tunnel.agent.proxy_credentials import from_settings as proxy_credentials
from tunnel.agent.socks_front import ProxyFactory
from tunnel.agent.status_page import TrafficMeter
from tunnel.agent.tunnel_client import TunnelClient
from tunnel.agent.tunnel_opener import AgentOpener
from tunnel.config import LOOPBACK_HOSTS, AgentSettings, read_pem
from tunnel.wire import descriptors
from tunnel.wire.connection import TunnelLimits
from tunnel.wire.listening import ListenService, tcp_endpoint
from tunnel.wire.tls import ca_certificate

log = Logger(namespace="fluidity.agent")
LOCAL_RESERVE = 128  # descriptors no local client can take


def certificate_name(spec: str) -> str:
    """Our certificate's CN: the name the server knows this agent by."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(read_pem(spec, "cert_file"))
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(names[0].value) if names else "?"
    except Exception:  # the TLS options already validated the file; this is only a label
        return "?"


def parse_host_header(value: str) -> str:
    """The host part of a Host header (`h`, `h:port`, `[v6]:port`), or '' when unusable."""
    value = value.strip()
    if value.startswith("["):
        inner = value[1 : value.find("]")] if "]" in value else ""
        return inner if inner and all(c in "0123456789abcdefABCDEF:." for c in inner) else ""
    host = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
    return host if host and all(c.isalnum() or c in ".-" for c in host) else ""


WILDCARDS = ("0.0.0.0", "::")


def is_own_host(value: str, proxy_hosts: tuple[str, ...], local_names: tuple[str, ...] = ()) -> bool:
    """Whether a Host header addresses this agent: `localhost`, a loopback address, an
    address it listens on or one of local_names, or (when it listens on a wildcard) any
    address literal. Never another name: DNS rebinding points a name at 127.0.0.1, and the
    browser still sends the name."""
    host = parse_host_header(value).lower().rstrip(".")
    if not host:
        return False
    if host == "localhost" or host in proxy_hosts or host in local_names:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or any(h in WILDCARDS for h in proxy_hosts)


STATE_EVERY = 5.0  # how often the status page asks the control plane, while it is looked at
NOTICE_FOR = 30.0


class Agent(service.Service):
    """Starts the tunnel with the service and stops it (closing streams) on shutdown."""

    def __init__(self, reactor, config: AgentSettings, tls_options) -> None:
        self.reactor = reactor
        self.config = config
        self.local_names = tuple(name.lower().rstrip(".") for name in config.local_names)
        self.started_at = reactor.seconds()
        self.identity = certificate_name(config.cert_file)
        self.lifecycle = settings_from(config)
        # One proxy policy for every connection the agent makes: the tunnel and the control plane.
        self.proxies = ProxyChoice(
            config.upstream_proxy,
            config.pac_url,
            config.upstream_proxy_ca,
            credentials=proxy_credentials(config),
            auth_allow=config.upstream_proxy_auth_allow,
        )
        self.control_plane: ControlPlaneClient | None = None
        self.locator: ServerLocator | None = None
        if self.lifecycle:
            self.control_plane = ControlPlaneClient(reactor, self.lifecycle, proxies=self.proxies)
            self.locator = ServerLocator(reactor, self.control_plane, self.lifecycle)
        self.tunnel = TunnelClient(
            reactor,
            tls_options,
            host=config.server_ip,
            port=config.server_port,
            connect_timeout=config.connect_timeout,
            limits=TunnelLimits.of(config, client_side=True),
            reconnect_max_delay=config.reconnect_max_delay,
            tunnel_wait=config.tunnel_wait,
            locator=self.locator,
            upstream_proxy=self.proxies,
            ca_certificate=ca_certificate(config),
        )
        self.opener = AgentOpener(self.tunnel, optimistic=config.optimistic_connect)
        total = descriptors.capacity(reactor)
        # Kept back for the tunnel, its reconnects, the control plane, logs and the listeners.
        budget = total - descriptors.reserve_for(total, LOCAL_RESERVE)
        self.site = ProxySite(
            reactor,
            self.opener,
            self,
            config.head_timeout,
            config.max_header_bytes,
            local=descriptors.LocalConnections(budget),
        )
        self.csrf = secrets.token_urlsafe(24)  # only the status page carries it: its buttons' proof of origin
        self.meter = TrafficMeter(reactor, self.tunnel.traffic)
        self._notice = ("", float("-inf"))
        self._state_asked = float("-inf")

    def serves_host(self, host_header: str) -> bool:
        return is_own_host(host_header, self.config.proxy_host, self.local_names)

    def pac(self, requested_host: str) -> str:
        """The PAC file, pointing at the address the browser used to fetch it when that is
        one the proxy listens on (or any, on a wildcard), else at the first address."""
        hosts = self.config.proxy_host
        asked = parse_host_header(requested_host).lower()
        if asked == "localhost":
            asked = "127.0.0.1" if "127.0.0.1" in hosts else "::1" if "::1" in hosts else ""
        host = asked if asked and (asked in hosts or any(h in WILDCARDS for h in hosts)) else hosts[0]
        if host in WILDCARDS:
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        address = f"[{host}]" if ":" in host else host
        return pac_file(f"{address}:{self.config.proxy_port}", self.config.pac_bypass)

    def health(self) -> dict:
        now = self.reactor.seconds()
        since = self.tunnel.connected_since
        return {
            "identity": self.identity,
            "connected": self.tunnel.current is not None,
            "server": self.tunnel.server,
            "server_dns_name": self.tunnel.dns_name or None,  # the control plane's; what a proxy is asked to CONNECT to
            "server_name": self.config.server_name,
            "uptime": round(now - self.started_at, 3),
            "tunnel_uptime": round(now - since, 3) if since is not None else None,
            "open_streams": self.tunnel.open_streams,
            "clients": self.site.clients,
            "local_connections": {
                "open": self.site.local.open,
                "limit": self.site.local.budget,
                "idle_dropped": self.site.local.dropped,
                "refused": self.site.local.refused,
            },
            "last_error": self.tunnel.last_error,
            "server_state": self.locator.describe() if self.locator else None,
        }

    def status(self, address: str) -> dict:
        """What the status page and `fluidity agent status` show; `address` is how the client reached us."""
        self._refresh_server_state()
        return {
            **self.health(),
            "address": address,
            "streams_by_destination": self.tunnel.streams_by_destination(),
            "traffic": self.tunnel.traffic(),
            "rate": self.meter.rates(),
            "history": list(self.meter.samples),
            "recent_errors": list(self.tunnel.recent_errors),
            "notice": self.notice,
        }

    def act(self, action: str) -> None:
        """A status-page button: wake the server now, or stop it."""
        if self.control_plane is None:
            self._say("no control plane is configured: nothing to wake or stop")
        elif action == "wake" and self.tunnel.current is not None:
            self._say("the server is running: nothing to wake")
        elif action == "wake":
            self._say("waking the server")
            log.info("status page: waking the server")
            self.tunnel.wake()
        else:
            self._say("stopping the server")
            log.info("status page: stopping the server")
            self.control_plane.kill().addCallbacks(
                self._stopped, lambda failure: self._say(f"could not stop the server: {failure.getErrorMessage()}")
            )

    def _say(self, text: str) -> None:
        """What the last button did, shown on the page for NOTICE_FOR seconds."""
        self._notice = (text, self.reactor.seconds())

    @property
    def notice(self) -> str:
        text, said = self._notice
        return text if self.reactor.seconds() - said < NOTICE_FOR else ""

    def _stopped(self, status: dict) -> None:
        self._say(f"server is {status.get('status', 'stopping')}")
        if self.locator is not None:
            self.locator.last_status, self.locator.since = status, None

    def _refresh_server_state(self) -> None:
        """While someone looks at the page, ask the control plane what the server does (every STATE_EVERY s)."""
        now = self.reactor.seconds()
        if self.control_plane is None or self.tunnel.current is not None or now - self._state_asked < STATE_EVERY:
            return
        self._state_asked = now

        def got(status: dict) -> None:
            if self.tunnel.current is None and self.locator is not None:
                self.locator.last_status = status

        self.control_plane.status().addCallbacks(got, lambda failure: None)

    def startService(self) -> None:
        super().startService()
        self.tunnel.start()
        self.meter.start()

    def stopService(self):
        self.meter.stop()
        super().stopService()
        closed = self.tunnel.stop()
        if not (self.lifecycle and self.lifecycle.kill_on_exit):
            return closed
        return closed.addCallback(lambda _: self._kill())

    def _kill(self) -> defer.Deferred:
        """Stop the server on the way out, bounded in time; a failure is only logged."""
        log.info("asking the control plane to stop the server (kill_on_exit)")
        assert self.control_plane is not None  # kill_on_exit comes with a lifecycle
        d = self.control_plane.kill(attempts=2)
        d.addTimeout(KILL_TIMEOUT, self.reactor)
        d.addCallbacks(
            lambda status: log.info("server is {status}", status=status.get("status", "?")),
            lambda failure: log.warn(
                "could not stop the server: {error}",
                error=f"no answer within {KILL_TIMEOUT:g}s"
                if failure.check(defer.TimeoutError)
                else failure.getErrorMessage(),
            ),
        )
        return d


def make_agent_service(reactor, config: AgentSettings, tls_options) -> service.MultiService:
    top = service.MultiService()
    agent = Agent(reactor, config, tls_options)
    agent.setServiceParent(top)
    port = config.proxy_port
    # The default pair is loopback on both families; a machine without IPv6 keeps the IPv4 one.
    optional = set(config.proxy_host) == set(LOOPBACK_HOSTS)
    for host in config.proxy_host:
        ListenService(
            tcp_endpoint(reactor, host, port),
            ProxyFactory(agent.site),
            "local proxy",
            host,
            port,
            optional=optional and host == "::1",
        ).setServiceParent(top)
    return top
