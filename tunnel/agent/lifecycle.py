"""The agent's side of the control plane: wake the server, find its address, stop it.

The server's IP changes at every start, so with a `lifecycle:` block the agent asks the
control plane (API Gateway + Lambdas, or `fluidity control-plane`) instead of trusting
`server_ip`: POST wake, then GET status every `wake_retry_interval` until the server is
running with a public IP, for at most `wake_timeout`. HTTP goes through Twisted's client
with certificate verification, per-request timeouts and retries with backoff; the API key
travels only in its header and is never logged.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from deployment.server_port import SERVER_PORT
from tunnel.agent.upstream import ProxiedEndpoints
from tunnel.config import AgentSettings, ConfigError
from tunnel.redaction import redact
from tunnel.secret_source import SecretUnavailable, api_key_entry, resolve
from tunnel.wire.addresses import BadAddress, check_host, is_loopback

log = Logger(namespace="fluidity.lifecycle")

MAX_ANSWER = 64 * 1024
KILL_TIMEOUT = 5.0


@dataclass(frozen=True)
class LifecycleSettings:
    wake_url: str
    status_url: str
    kill_url: str
    api_key: str = field(repr=False)
    wake_timeout: float
    retry_interval: float
    request_timeout: float
    kill_on_exit: bool
    upstream_proxy: str = field(default="", repr=False)  # the tunnel's proxy setting (its URL may hold a password)


def settings_from(config: AgentSettings) -> LifecycleSettings | None:
    """The checked lifecycle block, or None when the agent dials `server_ip` as configured."""
    block = config.lifecycle
    wake, status, kill = (block.wake_endpoint.strip(), block.status_endpoint.strip(), block.kill_endpoint.strip())
    if not (wake or status or kill):
        return None
    where = config.source
    for name, url in (("wake_endpoint", wake), ("status_endpoint", status), ("kill_endpoint", kill)):
        if url:
            _check_url(url, f"{where}: 'lifecycle.{name}'")
    if not wake:
        raise ConfigError(f"{where}: 'lifecycle.wake_endpoint' is required when the lifecycle block is used")
    status = status or _status_from_wake(wake, where)
    key = _required_key(config, where)
    _check_timings(config.lifecycle, where)
    kill_on_exit = config.lifecycle.kill_on_exit
    if kill_on_exit is None:
        kill_on_exit = bool(kill)
    elif kill_on_exit and not kill:
        raise ConfigError(f"{where}: 'lifecycle.kill_on_exit' needs 'lifecycle.kill_endpoint'")
    return LifecycleSettings(
        wake_url=wake,
        status_url=status,
        kill_url=kill,
        api_key=key,
        wake_timeout=config.lifecycle.wake_timeout,
        retry_interval=config.lifecycle.wake_retry_interval,
        request_timeout=config.lifecycle.request_timeout,
        kill_on_exit=kill_on_exit,
        upstream_proxy=config.upstream_proxy,
    )


def _status_from_wake(wake: str, where: str) -> str:
    """The status URL beside a wake URL ending in /wake, as the stack's outputs are laid out."""
    parts = urlsplit(wake)
    if not parts.path.rstrip("/").endswith("/wake"):
        raise ConfigError(
            f"{where}: 'lifecycle.status_endpoint' is required (it cannot be derived from a wake_endpoint that "
            f"does not end in /wake)"
        )
    return urlunsplit(parts._replace(path=parts.path.rstrip("/")[: -len("wake")] + "status"))


def _required_key(config: AgentSettings, where: str) -> str:
    """The control plane's key, read now so that a missing one stops the start, not the first wake."""
    try:
        key = api_key_of(config)
    except SecretUnavailable as e:
        raise ConfigError(f"{where}: {e}") from None
    if not key:
        raise ConfigError(
            f"{where}: 'lifecycle.api_key' is required with a lifecycle block (the control plane needs x-api-key)"
        )
    return key


def _check_timings(block, where: str) -> None:
    if block.wake_timeout < 1 or block.wake_retry_interval <= 0 or block.request_timeout <= 0:
        raise ConfigError(f"{where}: 'lifecycle.wake_timeout' must be at least 1s and the intervals above 0")


def api_key_of(config: AgentSettings) -> str:
    """The control plane's key from where `lifecycle.api_key` says it is (`env:VAR`,
    `file:PATH`, `keyring`: the entry for the wake endpoint's host), or as written;
    SecretUnavailable says why it cannot be had."""
    block = config.lifecycle
    try:
        host = urlsplit(block.wake_endpoint.strip() or block.status_endpoint.strip()).hostname or ""
    except ValueError:
        host = ""
    return resolve(block.api_key, "lifecycle.api_key", api_key_entry(host))


def _check_url(url: str, what: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises for a port out of range)
    except ValueError as e:
        raise ConfigError(f"{what}: bad URL {redact(url)!r}: {redact(str(e))}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what}: expected an http(s) URL, got {redact(url)!r}")
    if parts.username or parts.password or parts.query:
        raise ConfigError(f"{what}: put the API key in 'lifecycle.api_key', not in the URL")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ConfigError(f"{what}: plain http would send the API key in clear to {parts.hostname}; use https")


class ControlPlaneError(Exception):
    """A control-plane call failed; `retry` says whether trying again may help."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class ControlPlaneClient:
    """POST wake, GET status, POST kill, each a JSON answer or a ControlPlaneError."""

    ATTEMPTS = 3

    def __init__(self, reactor, settings: LifecycleSettings, http_agent=None, proxies=None) -> None:
        self.reactor = reactor
        self.settings = settings
        # The same proxy choice (a ProxyChoice, else the setting) and CONNECT as the tunnel,
        # the name left to the proxy.
        endpoints = ProxiedEndpoints(
            reactor, proxies if proxies is not None else settings.upstream_proxy, settings.request_timeout
        )
        self.http = http_agent or Agent.usingEndpointFactory(reactor, endpoints, pool=_quiet_pool(reactor))

    def wake(self) -> defer.Deferred:
        return self._call(b"POST", self.settings.wake_url, "wake")

    def status(self) -> defer.Deferred:
        return self._call(b"GET", self.settings.status_url, "status")

    def kill(self, attempts: int = 1) -> defer.Deferred:
        return self._call(b"POST", self.settings.kill_url, "kill", attempts)

    @defer.inlineCallbacks
    def _call(self, method: bytes, url: str, what: str, attempts: int = ATTEMPTS):
        for attempt in range(1, attempts + 1):
            try:
                answer = yield self._once(method, url, what)
                return answer
            except ControlPlaneError as e:
                if not e.retry or attempt == attempts:
                    raise
                yield task.deferLater(self.reactor, 0.5 * 2 ** (attempt - 1), lambda: None)

    @defer.inlineCallbacks
    def _once(self, method: bytes, url: str, what: str):
        headers = Headers(
            {
                b"x-api-key": [self.settings.api_key.encode()],
                b"accept": [b"application/json"],
                b"user-agent": [b"fluidity-agent"],
            }
        )
        try:
            d = self.http.request(method, url.encode(), headers, None)
            d.addTimeout(self.settings.request_timeout, self.reactor)
            response = yield d
            body = yield readBody(response).addTimeout(self.settings.request_timeout, self.reactor)
        except defer.TimeoutError:
            raise ControlPlaneError(
                f"{what}: no answer from {_safe(url)} within {self.settings.request_timeout:g}s", retry=True
            ) from None
        except Exception as e:
            raise ControlPlaneError(f"{what}: cannot reach {_safe(url)}: {_short(e)}", retry=True) from None
        try:
            data = json.loads(body[:MAX_ANSWER])
        except ValueError:
            data = None
        code = response.code
        if code == 403:
            raise ControlPlaneError(f"{what}: the control plane refused the API key (403)", retry=False)
        if code >= 400 or not isinstance(data, dict):
            reason = data.get("error") or data.get("message") if isinstance(data, dict) else None
            raise ControlPlaneError(
                f"{what}: {_safe(url)} answered {code}" + (f": {reason}" if reason else ""),
                retry=code >= 500 or code == 429,
            )
        return data


def _quiet_pool(reactor) -> HTTPConnectionPool:
    """A pool without keep-alive whose factories do not log every start and stop.

    Twisted offers no public switch for that; the pool's factory class is private. Where
    it is not what this expects, the pool is used as it is (two log lines a request)."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    factory = getattr(pool, "_factory", None)
    if isinstance(factory, type) and hasattr(factory, "noisy"):
        pool._factory = type("QuietHTTP11ClientFactory", (factory,), {"noisy": False})  # type: ignore[assignment]
    return pool


def _safe(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    return urlunsplit((parts.scheme, host + (f":{parts.port}" if parts.port else ""), parts.path, "", ""))


def _short(error: BaseException) -> str:
    """A connection failure in words (Twisted's own strings are often reprs)."""
    from twisted.internet import error as e

    reasons = getattr(error, "reasons", None)  # twisted.web's ResponseNeverReceived & co.
    if reasons:
        return "; ".join(_short(r.value) for r in reasons)
    if isinstance(error, e.DNSLookupError):
        return (
            "its name does not resolve here (behind a proxy, set upstream_proxy or $HTTPS_PROXY: the proxy resolves it)"
        )
    if isinstance(error, (e.TimeoutError, e.ConnectingCancelledError, defer.TimeoutError)):
        return "timed out connecting"
    if isinstance(error, e.ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, e.ConnectError) and error.osError is not None:
        return str(error.osError)
    text = str(error)
    if not text or text.startswith(("(", "HostnameAddress", "<")):
        return type(error).__name__
    return text


class ServerLocator:
    """Finds where the server is, waking it when asked, and remembers what it saw."""

    def __init__(self, reactor, client: ControlPlaneClient, settings: LifecycleSettings) -> None:
        self.reactor = reactor
        self.client = client
        self.settings = settings
        self.phase = "idle"  # idle | waking | starting | running | stopped | failed
        self.since: float | None = None  # when the current wake began
        self.last_status: dict | None = None

    def describe(self) -> str:
        """`starting (task PENDING) for 12s`, for 503 answers and /health."""
        status = self.last_status or {}
        task_state = f" (task {status['taskStatus']})" if status.get("taskStatus") else ""
        waited = f" for {round(self.reactor.seconds() - self.since)}s" if self.since is not None else ""
        return f"{status.get('status', self.phase)}{task_state}{waited}"

    @defer.inlineCallbacks
    def locate(self, wake: bool):
        """Fires with the ServerAddress of a running server, or None when it is stopped and
        `wake` is false; fails with ControlPlaneError when the control plane cannot be
        used or the server is not running within wake_timeout. Cancellable."""
        if wake:
            self.phase, self.since = "waking", self.reactor.seconds()
            log.info("waking the server via {url}", url=_safe(self.settings.wake_url))
            status = yield self.client.wake()
        else:
            status = yield self.client.status()
        deadline = self.reactor.seconds() + self.settings.wake_timeout
        shown = None
        while True:
            self.last_status = status
            state = status.get("status")
            address = _address(status)
            if state == "running" and address:
                if self.since is not None:
                    log.info(
                        "server is running at {host}:{port}{name} after {n}s",
                        host=address.ip,
                        port=address.port,
                        name=f" ({address.dns_name})" if address.dns_name else "",
                        n=round(self.reactor.seconds() - self.since),
                    )
                self.phase, self.since = "running", None
                return address
            if state in ("stopped", "stopping") and not wake:
                self.phase = "stopped"
                return None
            self.phase = "starting"
            if self.since is None:
                self.since = self.reactor.seconds()
            if (state, status.get("taskStatus")) != shown:
                shown = (state, status.get("taskStatus"))
                log.info("server is {what}; waiting", what=self.describe())
            if self.reactor.seconds() >= deadline:
                self.phase = "failed"
                raise ControlPlaneError(
                    f"the server is not running after {self.settings.wake_timeout:g}s: {self.describe()}", retry=True
                )
            yield task.deferLater(self.reactor, self.settings.retry_interval, lambda: None)
            # Stopped behind our back (slept, killed) while we wait: ask again.
            status = yield (self.client.wake() if state in ("stopped", "stopping") else self.client.status())


class ServerAddress(NamedTuple):
    """Where the control plane says the server is: its IP, its port, and its public DNS
    name when the task has one ("" otherwise), for proxies that refuse raw addresses.
    Behind the stack's load balancer (`endpoint`) the IP is that name too: it never
    changes, whichever task answers."""

    ip: str
    port: int
    dns_name: str = ""


def _address(status: dict) -> ServerAddress | None:
    ip, port, name = status.get("publicIp"), status.get("port"), status.get("publicDnsName")
    port = port if isinstance(port, int) and 0 < port < 65536 else SERVER_PORT
    endpoint = status.get("endpoint")
    if isinstance(endpoint, str) and endpoint and ":" not in endpoint:
        try:
            stable = check_host(endpoint)
        except BadAddress:
            stable = ""  # not a name: the task's own address, if any, still works
        if stable:
            return ServerAddress(stable, port, stable)
    if not isinstance(ip, str) or not ip:
        return None
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return None
    try:
        name = check_host(name) if isinstance(name, str) and name and ":" not in name else ""
    except BadAddress:
        name = ""  # a name that is not one: the IP still works
    return ServerAddress(ip, port, name)
