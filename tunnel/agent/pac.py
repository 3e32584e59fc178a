"""`GET /proxy.pac` from the agent: one browser setting sends everything through it.

Everything goes to the agent's proxy except the bypass list: plain host names, host
patterns (`*.corp.example`, `localhost`) and networks (`10.0.0.0/8`). Networks are only
matched against IP literals, so the browser never waits on a DNS lookup to decide.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence

__all__ = ["pac_file"]


def pac_file(proxy: str, bypass: Sequence[str]) -> str:
    """The PAC script; `proxy` is `host:port` as the browser should reach the agent."""
    networks, patterns = [], []
    for entry in bypass:
        if "/" in entry or entry.replace(".", "").isdigit():
            net = ipaddress.ip_network(entry, strict=False)
            networks.append([str(net.network_address), str(net.netmask)])
        else:
            patterns.append(entry.lower())
    return f"""// Fluidity: everything through the agent at {proxy}, except the bypass list.
function FindProxyForURL(url, host) {{
  host = host.toLowerCase();
  if (host.indexOf(":") >= 0) {{  // an IPv6 literal: only loopback and link-local stay local
    return (host == "::1" || host.indexOf("fe80:") == 0) ? "DIRECT" : "PROXY {proxy}";
  }}
  if (isPlainHostName(host)) return "DIRECT";
  var patterns = {json.dumps(patterns)};
  for (var i = 0; i < patterns.length; i++) {{
    if (shExpMatch(host, patterns[i])) return "DIRECT";
  }}
  if (/^\\d+\\.\\d+\\.\\d+\\.\\d+$/.test(host)) {{
    var networks = {json.dumps(networks)};
    for (var j = 0; j < networks.length; j++) {{
      if (isInNet(host, networks[j][0], networks[j][1])) return "DIRECT";
    }}
  }}
  return "PROXY {proxy}";
}}
"""
