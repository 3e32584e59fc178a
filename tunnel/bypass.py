"""The hosts and networks the agent's /proxy.pac sends DIRECT: the default list, and the
check of an entry. Kept apart from the PAC file so the settings can check `pac_bypass`
without importing the agent."""

from __future__ import annotations

import ipaddress
import re

__all__ = ["DEFAULT_BYPASS", "check_bypass"]

DEFAULT_BYPASS = (
    "localhost",
    "*.local",
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
)
_PATTERN = re.compile(r"^[A-Za-z0-9*?][A-Za-z0-9.*?-]*$")


def check_bypass(entries: list[str]) -> list[str]:
    """Each entry is an IPv4 network or a host pattern; raises ValueError naming a bad one."""
    for entry in entries:
        if "/" in entry or entry.replace(".", "").isdigit():
            try:
                if ipaddress.ip_network(entry, strict=False).version != 4:
                    raise ValueError
            except ValueError:
                raise ValueError(f"{entry!r} is not an IPv4 network like 10.0.0.0/8") from None
        elif not _PATTERN.match(entry):
            raise ValueError(f"{entry!r} is not a host name or pattern like *.corp.example")
    return entries
