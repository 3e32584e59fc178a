"""The server's egress policy: which resolved addresses a tunnel may connect to.

The server sits inside a VPC next to the instance metadata and ECS credential
endpoints, so every address a name resolves to is checked (not just the first) and
the dialer then connects to a checked address, never re-resolving (no DNS rebinding).
Pure functions over `ipaddress` objects: no I/O here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# IANA's IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890 and later), plus
# multicast: every block whose addresses are not globally reachable is refused unless
# an allow rule opens it. Named so that a refusal can say which rule matched.
_NOT_GLOBAL = (
    ("unspecified / this network", "0.0.0.0/8"),
    ("private (RFC 1918)", "10.0.0.0/8"),
    ("carrier-grade NAT", "100.64.0.0/10"),
    ("loopback", "127.0.0.0/8"),
    ("link-local / instance metadata", "169.254.0.0/16"),
    ("private (RFC 1918)", "172.16.0.0/12"),
    ("IETF protocol assignments", "192.0.0.0/24"),
    ("documentation (TEST-NET-1)", "192.0.2.0/24"),
    ("deprecated 6to4 relay anycast", "192.88.99.0/24"),
    ("private (RFC 1918)", "192.168.0.0/16"),
    ("benchmarking", "198.18.0.0/15"),
    ("documentation (TEST-NET-2)", "198.51.100.0/24"),
    ("documentation (TEST-NET-3)", "203.0.113.0/24"),
    ("multicast", "224.0.0.0/4"),
    ("reserved", "240.0.0.0/4"),
    ("unspecified", "::/128"),
    ("loopback", "::1/128"),
    ("IPv4-compatible (deprecated)", "::/96"),
    ("IPv4-translated (SIIT)", "::ffff:0:0:0/96"),
    ("local-use IPv4/IPv6 translation", "64:ff9b:1::/48"),
    ("discard-only", "100::/64"),
    ("dummy prefix", "100:0:0:1::/64"),
    ("IETF protocol assignments", "2001::/23"),
    ("documentation", "2001:db8::/32"),
    ("documentation", "3fff::/20"),
    ("segment routing SIDs", "5f00::/16"),
    ("unique local", "fc00::/7"),
    ("link-local", "fe80::/10"),
    ("site-local (deprecated)", "fec0::/10"),
    ("multicast", "ff00::/8"),
)

# Blocks inside the ones above that the registries mark globally reachable (anycast
# services such as PCP, TURN, AS112, AMT).
_GLOBAL_EXCEPTIONS = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "192.0.0.9/32",
        "192.0.0.10/32",
        "2001:1::1/128",
        "2001:1::2/128",
        "2001:1::3/128",
        "2001:3::/32",
        "2001:4:112::/48",
        "2001:20::/28",
        "2001:30::/28",
    )
)

DENIED_NETWORKS: tuple[tuple[str, IPNetwork], ...] = tuple(
    (name, ipaddress.ip_network(cidr)) for name, cidr in _NOT_GLOBAL
)

# All of IPv6 that is allocated for global unicast; anything outside it is not reachable.
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")


class EgressDenied(Exception):
    """The destination is not one this server may reach."""


@dataclass(frozen=True)
class AllowRule:
    """An explicit opening: a network and an inclusive port range."""

    network: IPNetwork
    first_port: int = 1
    last_port: int = 65535

    def matches(self, address: IPAddress, port: int) -> bool:
        return (
            address.version == self.network.version
            and address in self.network
            and self.first_port <= port <= self.last_port
        )


def parse_allow_rule(text: str) -> AllowRule:
    """`CIDR`, `CIDR:port`, `CIDR:low-high`; IPv6 in brackets when a port follows."""
    text = text.strip()
    ports = ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"bad allow rule {text!r}: unclosed '['")
        net_text, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad allow rule {text!r}")
            ports = rest[1:]
    elif text.count(":") == 1:
        net_text, ports = text.split(":")
    else:
        net_text = text
    try:
        network = ipaddress.ip_network(net_text, strict=False)
    except ValueError as e:
        raise ValueError(f"bad allow rule {text!r}: {e}") from None
    if not ports:
        return AllowRule(network)
    low, _, high = ports.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise ValueError(f"bad allow rule {text!r}: ports must be N or N-M") from None
    if not (1 <= first <= last <= 65535):
        raise ValueError(f"bad allow rule {text!r}: ports must lie in 1-65535, low first")
    return AllowRule(network, first, last)


def unwrap(address: IPAddress) -> IPAddress:
    """See through IPv6 forms that carry an IPv4 address and are routed to it (mapped,
    the well-known NAT64 prefix, 6to4). The deprecated IPv4-compatible and -translated
    forms and the local-use NAT64 prefix are not unwrapped: they are refused outright."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
    return address


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class EgressPolicy:
    allow: tuple[AllowRule, ...] = field(default=())

    def denial(self, address: IPAddress, port: int) -> str | None:
        """Why `address:port` is refused, or None when it may be dialled."""
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            address = ipaddress.IPv6Address(str(address).split("%", 1)[0])
        inner = unwrap(address)
        for candidate in {address, inner}:
            if any(rule.matches(candidate, port) for rule in self.allow):
                return None
        if any(inner.version == n.version and inner in n for n in _GLOBAL_EXCEPTIONS):
            return None
        for name, network in DENIED_NETWORKS:
            if inner.version == network.version and inner in network:
                return f"{inner} is {name}"
        if inner.version == 6 and inner not in _GLOBAL_UNICAST_V6:
            return f"{inner} is outside IPv6 global unicast (2000::/3)"
        return None

    def check_all(self, addresses: list[IPAddress], port: int) -> None:
        """Raise EgressDenied if any resolved address is refused (one bad answer taints the name)."""
        if not addresses:
            raise EgressDenied("name resolved to no address")
        for address in addresses:
            reason = self.denial(address, port)
            if reason:
                raise EgressDenied(reason)


def policy_from_strings(rules: Iterable[str]) -> EgressPolicy:
    return EgressPolicy(tuple(parse_allow_rule(r) for r in rules))
