"""macOS: the network settings' proxies, as `scutil --proxy` prints them, for
`upstream_proxy: auto`.

pypac reads the automatic-configuration URL on macOS only through PyObjC, which an agent
installed with pip rarely has; `scutil --proxy` is on every Mac and prints the same
dictionary (the active network service's, as System Settings shows it):

    <dictionary> {
      ExceptionsList : <array> {
        0 : *.local
        1 : 169.254/16
      }
      ExcludeSimpleHostnames : 1
      HTTPSEnable : 1
      HTTPSPort : 3128
      HTTPSProxy : proxy.corp.example
      ProxyAutoConfigEnable : 1
      ProxyAutoConfigURLString : http://wpad.corp.example/wpad.dat
    }

The agent dials TLS through CONNECT, so it takes the HTTPS proxy (`HTTPSEnable`), and the PAC
URL when `ProxyAutoConfigEnable` is on; the exceptions (and `<local>` for simple host names)
go direct.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

from tunnel.agent.system_proxy import ManualProxy

__all__ = ["MacProxySettings", "parse", "read"]

WHERE = "the macOS network settings"
_ENTRY = re.compile(r"^\s*(\S+)\s*:\s*(.*?)\s*$")


@dataclass(frozen=True)
class MacProxySettings:
    pac_url: str = ""  # ProxyAutoConfigURLString, when ProxyAutoConfigEnable is on
    manual: ManualProxy | None = None  # the HTTPS proxy set by hand, with its exceptions


def _dictionary(text: str) -> dict[str, object]:
    """scutil's top-level dictionary: values as text, arrays as lists of text."""
    values: dict[str, object] = {}
    array: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped == "}":
            array = None
            continue
        match = _ENTRY.match(line)
        if match is None:
            continue
        key, value = match.groups()
        if array is not None:
            array.append(value)
        elif value == "<array> {":
            array = []
            values[key] = array
        elif not value.startswith("<dictionary>"):
            values[key] = value
    return values


def parse(text: str) -> MacProxySettings:
    """What `scutil --proxy` printed; anything it lacks is simply not set."""
    values = _dictionary(text)
    pac = str(values.get("ProxyAutoConfigURLString", "")) if values.get("ProxyAutoConfigEnable") == "1" else ""
    host, port = str(values.get("HTTPSProxy", "")), str(values.get("HTTPSPort", "") or "443")
    manual = None
    if values.get("HTTPSEnable") == "1" and host:
        exceptions = values.get("ExceptionsList", [])
        bypass = [e.lower() for e in exceptions] if isinstance(exceptions, list) else []
        if values.get("ExcludeSimpleHostnames") == "1":
            bypass.append("<local>")
        shown = f"[{host}]" if ":" in host else host
        manual = ManualProxy(f"http://{shown}:{port}", tuple(bypass), WHERE)
    return MacProxySettings(pac, manual)


def read(timeout: float = 3.0) -> MacProxySettings:
    """This Mac's settings now (nothing elsewhere, or when scutil cannot be asked)."""
    scutil = shutil.which("scutil") if sys.platform == "darwin" else None
    if scutil is None:
        return MacProxySettings()
    try:
        done = subprocess.run([scutil, "--proxy"], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return MacProxySettings()
    return parse(done.stdout) if done.returncode == 0 else MacProxySettings()
