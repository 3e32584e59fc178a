"""The proxy a user set by hand in the system's settings, whichever system this is: for
`upstream_proxy: auto` when there is no PAC file. Each platform's reader lives in its own
module (windows_proxy_settings: the registry; macos_proxy_settings: `scutil --proxy`); this
one holds what they both return and picks the reader for the platform the agent runs on."""

from __future__ import annotations

import fnmatch
import ipaddress
import sys
from dataclasses import dataclass

__all__ = ["ManualProxy", "read"]


@dataclass(frozen=True)
class ManualProxy:
    """A proxy set by hand: its URL, the hosts that bypass it, and which settings said so."""

    url: str
    bypass: tuple[str, ...] = ()
    where: str = "the Windows proxy settings"

    def bypassed(self, host: str) -> bool:
        """Whether `host` goes direct: case-insensitive wildcards, `<local>` for a name without a
        dot (Windows' ProxyOverride, macOS's ExcludeSimpleHostnames), and networks (macOS's
        `169.254/16`, `10.0.0.0/8`) for an address."""
        host = host.lower().strip("[]")
        for entry in self.bypass:
            if entry == "<local>":
                if "." not in host and ":" not in host:
                    return True
            elif "/" in entry:
                if _in_network(host, entry):
                    return True
            elif fnmatch.fnmatchcase(host, entry):
                return True
        return False


def _in_network(host: str, entry: str) -> bool:
    """`entry` as macOS writes it (`169.254/16`: the missing octets are zero)."""
    address, _, bits = entry.partition("/")
    if ":" not in address:
        address = ".".join(([*address.split("."), "0", "0", "0"])[:4])
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(f"{address}/{bits}", strict=False)
    except ValueError:
        return False


def read() -> ManualProxy | None:
    """The current user's hand-set proxy on this system, else None (nothing set, or Linux)."""
    if sys.platform == "win32":
        from tunnel.agent import windows_proxy_settings

        return windows_proxy_settings.read()
    if sys.platform == "darwin":
        from tunnel.agent import macos_proxy_settings

        return macos_proxy_settings.read().manual
    return None
