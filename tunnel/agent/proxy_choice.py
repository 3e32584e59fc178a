"""Which proxy the agent uses for a host: the one configured, `auto`, or the environment's.

Corporate laptops get their proxy from a PAC file, named by the desktop's settings or
found by WPAD, not from $HTTPS_PROXY. With `upstream_proxy: auto` the agent finds that
file the way the platform does (pypac: `pac_url` if given, else the Windows or macOS
automatic-configuration setting, else WPAD by DNS), and asks its `FindProxyForURL` for each
host it dials: the server and the control plane alike, `DIRECT` honoured. No PAC file
anywhere falls back to the proxy set by hand in the system's settings (system_proxy: Windows'
registry, macOS's `scutil --proxy`),
then $HTTPS_PROXY / $NO_PROXY, then to direct. A proxy a PAC file names gets credentials
only when `upstream_proxy_auth_allow` lists it (tunnel/proxy_trust.py). Finding the file blocks
(DNS, HTTP), so it runs in a thread, once and then every `REFRESH` seconds at most: a
laptop moves between networks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, ssl, threads
from twisted.logger import Logger

from tunnel.agent import macos_proxy_settings, system_proxy
from tunnel.agent.proxy_credentials import ProxyCredentials
from tunnel.agent.upstream import UpstreamProxy, parse_proxy_url, proxy_for
from tunnel.proxy_trust import allows, withheld
from tunnel.wire.addresses import format_authority

if TYPE_CHECKING:
    from pypac.parser import PACFile

AUTO = "auto"
REFRESH = 300.0
log = Logger(namespace="fluidity.agent")


@dataclass(frozen=True)
class FoundPac:
    """A PAC file and where it came from, for doctor and the log."""

    where: str
    pac: PACFile


def discover(pac_url: str = "", timeout: float = 3.0) -> FoundPac | None:
    """Blocking: the PAC file the platform would use, or None when there is none."""
    from pypac.api import download_pac
    from pypac.os_settings import ON_DARWIN, ON_WINDOWS, autoconfig_url_from_registry
    from pypac.parser import PACFile
    from pypac.wpad import proxy_urls_from_dns

    candidates: list[tuple[str, str]] = []
    if pac_url:
        candidates.append((pac_url, "pac_url"))
    else:
        setting = autoconfig_url_from_registry() if ON_WINDOWS else _macos_pac_url() if ON_DARWIN else None
        if setting:
            candidates.append((setting, "the Windows proxy settings" if ON_WINDOWS else "the macOS network settings"))
        candidates += [(url, "WPAD") for url in proxy_urls_from_dns()]
    for url, why in candidates:
        text = (
            _read_local(url)
            if not url.lower().startswith(("http://", "https://"))
            else download_pac([url], timeout=timeout)
        )
        if text:
            return FoundPac(f"the PAC file at {url} ({why})", PACFile(text))
    return None


def _macos_pac_url() -> str | None:
    """The automatic-configuration URL of macOS's network settings: pypac asks PyObjC, which a
    pip-installed agent rarely has (ImportError); `scutil --proxy` is on every Mac."""
    from pypac.os_settings import autoconfig_url_from_preferences

    try:
        return autoconfig_url_from_preferences() or macos_proxy_settings.read().pac_url or None
    except ImportError:
        return macos_proxy_settings.read().pac_url or None


def _read_local(url: str) -> str | None:
    from pypac.os_settings import file_url_to_local_path

    path = file_url_to_local_path(url) if url.lower().startswith("file://") else url
    try:
        return Path(path).read_text()
    except (OSError, ValueError):
        return None


class ProxyChoice:
    """The agent's one proxy policy: `choose(host, port)` says which proxy (None: direct) and why."""

    def __init__(
        self,
        configured: str,
        pac_url: str = "",
        proxy_ca: str = "",
        environ=os.environ,
        find=discover,
        credentials: ProxyCredentials | None = None,
        auth_allow: tuple[str, ...] = (),
        manual=system_proxy.read,
    ) -> None:
        self.configured = configured.strip()
        self.auth_allow = auth_allow  # discovered proxies that may still have credentials (upstream_proxy_auth_allow)
        self.credentials = credentials or ProxyCredentials()  # for a proxy whose URL names no user
        self.pac_url, self.environ, self._find = pac_url, environ, find
        self._manual = manual  # `auto` without a PAC file: the proxy set by hand (Windows, macOS)
        self.found: FoundPac | None = None
        self._looked_at: float | None = None
        self._looking: defer.Deferred | None = None
        self._trust = ssl.Certificate.loadPEM(Path(proxy_ca).read_bytes()) if proxy_ca else None

    @property
    def auto(self) -> bool:
        return self.configured == AUTO

    def choose(self, host: str, port: int) -> tuple[UpstreamProxy | None, str]:
        proxy, why = self._choose(host, port)
        return self.credentials.apply(proxy), why

    def _choose(self, host: str, port: int) -> tuple[UpstreamProxy | None, str]:
        if self.configured and not self.auto:
            return parse_proxy_url(self.configured), "upstream_proxy"
        if self.auto and self.found is not None:
            return self._from_pac(self.found, host, port)
        manual = self._manual() if self.auto else None
        if manual is not None:
            if manual.bypassed(host):
                return None, f"direct: {host} is an exception in {manual.where}"
            return parse_proxy_url(manual.url), f"{manual.where} (set by hand; no PAC file)"
        proxy = proxy_for("", host, self.environ)
        return proxy, ("$HTTPS_PROXY" if proxy else "no proxy configured") + (
            " (upstream_proxy: auto found no PAC file)" if self.auto else ""
        )

    def _from_pac(self, found: FoundPac, host: str, port: int) -> tuple[UpstreamProxy | None, str]:
        from pypac.parser import parse_pac_value

        where = found.where
        try:
            value = found.pac.find_proxy_for_url(f"https://{format_authority(host, port)}/", host)
        except Exception as e:  # the PAC file's own JavaScript failed: direct, and say so
            return None, f"{where} failed for {host} ({e}): direct"
        for entry in parse_pac_value(value or "DIRECT"):
            if entry == "DIRECT":
                return None, f"DIRECT from {where}"
            if entry.startswith(("http://", "https://")):
                return self._discovered(parse_proxy_url(entry), where), f"from {where}"
        return None, f"{where} named only proxies the agent cannot use ({value!r}): direct"

    def _discovered(self, proxy: UpstreamProxy, where: str) -> UpstreamProxy:
        """A proxy the user did not name: no credentials unless upstream_proxy_auth_allow lists it."""
        if allows(self.auth_allow, proxy.host):
            return proxy
        return replace(proxy, credentials_withheld=withheld(proxy.display, proxy.host, where))

    def proxy_tls(self, proxy: UpstreamProxy):
        """How an https:// proxy's certificate is checked: its name, against upstream_proxy_ca or the system's CAs."""
        return (
            ssl.optionsForClientTLS(proxy.host, trustRoot=self._trust)
            if self._trust is not None
            else ssl.optionsForClientTLS(proxy.host)
        )

    def refresh(self, reactor, force: bool = False) -> defer.Deferred | None:
        """For `auto`: look for the PAC file again if it is time (`force`: the network changed,
        so now); None when nothing to wait for."""
        if not self.auto:
            return None
        if self._looking is not None:
            return self._waiter()
        now = reactor.seconds()
        if not force and self._looked_at is not None and now - self._looked_at < REFRESH:
            return None
        self._looked_at = now
        self._looking = threads.deferToThreadPool(reactor, reactor.getThreadPool(), self._find, self.pac_url)
        self._looking.addCallbacks(self._found, self._not_found)
        return self._waiter()

    def _waiter(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()

        def done(result: Any) -> Any:
            if not d.called:
                d.callback(None)
            return result

        if self._looking is not None:
            self._looking.addBoth(done)
        return d

    def _found(self, found: FoundPac | None) -> None:
        self._looking = None
        if (found and found.where) != (self.found and self.found.where):
            log.info(
                "upstream_proxy auto: {what}",
                what=f"using {found.where}" if found else "no PAC file found; $HTTPS_PROXY or direct",
            )
        self.found = found

    def _not_found(self, failure) -> None:
        self._looking = None
        log.warn(
            "upstream_proxy auto: looking for a PAC file failed: {error}; keeping {what}",
            error=failure.getErrorMessage(),
            what=self.found.where if self.found else "$HTTPS_PROXY or direct",
        )
