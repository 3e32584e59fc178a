"""Which upstream proxies may be answered with the user's credentials.

A proxy the user named (`upstream_proxy`, `$HTTPS_PROXY`) is theirs. One the agent found by
itself (a PAC file, WPAD, the system's settings) is whoever answered on this network: a
WPAD host on a hotel's network, a PAC file fetched over plain HTTP. It gets no credentials
at all (no Basic, no Digest, no NTLM or Negotiate response, not even as the logged-in user:
an NTLM response can be cracked or relayed) unless its name is on `upstream_proxy_auth_allow`,
names or `*.domain` patterns. Kept apart from the agent so the settings can check the list
without importing it.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["SETTING", "allows", "check_allowed", "withheld"]

SETTING = "upstream_proxy_auth_allow"
_LABEL = r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?"
_NAME = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")


def _normal(host: str) -> str:
    """Lower case, no trailing dot, no brackets; an IP address in its one canonical form."""
    text = host.strip().strip("[]").lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


def check_allowed(entries: list[str]) -> list[str]:
    """Each entry a host name, `*.domain` or an IP address; raises ValueError naming a bad one."""
    checked = []
    for entry in entries:
        text = _normal(entry)
        if text in ("*", "*.") or not (_NAME.match(text) or _is_address(text)):
            raise ValueError(
                f"{entry!r} is not a proxy host name: list names like proxy.corp.example, patterns like "
                "*.corp.example or addresses (no scheme, port or '*' alone)"
            )
        checked.append(text)
    return list(dict.fromkeys(checked))


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def allows(entries: tuple[str, ...] | list[str], host: str) -> bool:
    """Whether `host` is on the list: the same name or address, or under a `*.domain` entry."""
    name = _normal(host)
    for entry in entries:
        if entry.startswith("*.") and name.endswith(entry[1:]) and len(name) > len(entry) - 1:
            return True
        if name == entry:
            return True
    return False


def withheld(display: str, host: str, found_by: str) -> str:
    """Why a discovered proxy gets no credentials, and the line of configuration that changes it."""
    entry = _normal(host)
    shown = f'"{entry}"' if ":" in entry else entry  # YAML: an IPv6 address needs quotes in a list
    return (
        f"{display} was found in {found_by}, and the agent answers proxy authentication only for a proxy you named "
        f"(upstream_proxy, $HTTPS_PROXY) or allowed; if it is your network's proxy, allow it in the agent's "
        f"config: {SETTING}: [{shown}]"
    )
