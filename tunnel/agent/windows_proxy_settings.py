"""Windows: the proxy a user set by hand in Internet Settings, for `upstream_proxy: auto` when
there is no PAC file (its AutoConfigURL is pypac's to read).

HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Internet Settings holds `ProxyEnable` (1: use
`ProxyServer`), `ProxyServer` (`host:port` for every scheme, or `http=h:p;https=h:p;socks=h:p`)
and `ProxyOverride` (`;`-separated hosts that go direct, `*` wildcards, `<local>` for names
without a dot). The agent dials TLS through CONNECT, so it takes the `https=` proxy, else the
one for every scheme; like Windows, a list with neither means direct.
"""

from __future__ import annotations

import sys

from tunnel.agent.system_proxy import ManualProxy

KEY = r"Software\Microsoft\Windows\CurrentVersion\Internet Settings"


def parse(enabled: int, server: str, override: str = "") -> ManualProxy | None:
    """The settings' values as a ManualProxy; None when the proxy is off or names none for HTTPS."""
    if not enabled or not server.strip():
        return None
    entries = [e.strip() for e in server.split(";") if e.strip()]
    by_scheme = dict(e.split("=", 1) for e in entries if "=" in e)
    plain = [e for e in entries if "=" not in e]
    chosen = by_scheme.get("https") or (plain[0] if plain else None)
    if not chosen:
        return None
    url = chosen if "://" in chosen else f"http://{chosen}"
    bypass = tuple(e.strip().lower() for e in override.split(";") if e.strip())
    return ManualProxy(url, bypass)


def read() -> ManualProxy | None:
    """The current user's hand-set proxy (Windows), else None (other systems, nothing set)."""
    if sys.platform != "win32":
        return None
    import winreg

    values: dict[str, object] = {}
    try:
        with winreg.OpenKey(winreg.HKEY_CURRENT_USER, KEY) as key:
            for name in ("ProxyEnable", "ProxyServer", "ProxyOverride"):
                try:
                    values[name] = winreg.QueryValueEx(key, name)[0]
                except OSError:  # not set
                    pass
    except OSError:  # no Internet Settings key at all
        return None
    enabled = values.get("ProxyEnable", 0)
    if isinstance(enabled, bytes):  # REG_BINARY on some systems
        enabled = int.from_bytes(enabled[:4], "little")
    return parse(
        enabled if isinstance(enabled, int) else 0,
        str(values.get("ProxyServer") or ""),
        str(values.get("ProxyOverride") or ""),
    )
