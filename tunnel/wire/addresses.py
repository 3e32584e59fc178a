"""Parse the destinations proxy clients name: `host:port` authorities and `http://` URLs.

Kept free of I/O so every front end (HTTP/1.1 proxy, the server's CONNECT, HTTP/2
`:authority`) refuses malformed input the same way, with one readable reason.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

# RFC 1123 host names plus the underscores real DNS carries; IP literals are checked apart.
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?$")


class BadAddress(ValueError):
    """A destination a client named cannot be understood; the message says why."""


@dataclass(frozen=True)
class Destination:
    host: str
    port: int

    @property
    def authority(self) -> str:
        return format_authority(self.host, self.port)


def format_authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_port(text: str) -> int:
    if not text.isdigit() or len(text) > 5:
        raise BadAddress(f"bad port {text!r}")
    port = int(text)
    if not 1 <= port <= 65535:
        raise BadAddress(f"port {port} out of range")
    return port


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also as ::ffff:127.x), `localhost` and names under `.localhost`
    (RFC 6761): this machine, which no proxy elsewhere can reach for us."""
    bare = host.strip().strip("[]").split("%", 1)[0].rstrip(".").lower()
    if bare == "localhost" or bare.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def check_host(host: str) -> str:
    """A host name or IP literal as given, lower-cased; BadAddress says why it is not one."""
    if not host:
        raise BadAddress("empty host")
    if ":" in host:  # only an IPv6 literal may hold colons
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise BadAddress(f"bad IPv6 address {host!r}") from None
        return host
    if not _HOSTNAME.match(host):
        raise BadAddress(f"bad host name {host!r}")
    return host.rstrip(".").lower()


def parse_authority(text: str | bytes) -> Destination:
    """`host:port` or `[v6]:port`, as in CONNECT and HTTP/2 `:authority`."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise BadAddress("authority is not ASCII") from None
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise BadAddress(f"bad authority {text!r} (want [ipv6]:port)")
        return Destination(check_host(text[1:end]), _check_port(text[end + 2 :]))
    host, sep, port = text.rpartition(":")
    if not sep:
        raise BadAddress(f"authority {text!r} has no port")
    return Destination(check_host(host), _check_port(port))


@dataclass(frozen=True)
class HttpTarget:
    destination: Destination
    path: str  # origin-form: path plus query, never empty
    host: str  # the URL's authority without userinfo: what the Host header must say (RFC 9112 §3.2.2)


def parse_http_url(text: str | bytes) -> HttpTarget:
    """An absolute-form `http://host[:port]/path?query` request target."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise BadAddress("URL is not ASCII") from None
    try:
        parts = urlsplit(text)
    except ValueError as e:  # unbalanced brackets, a bracketed host that is no IP
        raise BadAddress(f"bad URL: {e}") from None
    if parts.scheme.lower() != "http":
        raise BadAddress(f"unsupported scheme {parts.scheme!r} (only http:// in absolute form; use CONNECT for https)")
    netloc = parts.netloc.rpartition("@")[2]  # userinfo is never forwarded
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise BadAddress("bad IPv6 literal in URL")
        host, rest = netloc[1:end], netloc[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ("" if not rest else None)
        if port_text is None:
            raise BadAddress("bad URL authority")
    else:
        host, _, port_text = netloc.partition(":")
    port = _check_port(port_text) if port_text else 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    destination = Destination(check_host(host), port)
    shown = f"[{destination.host}]" if ":" in destination.host else destination.host
    return HttpTarget(destination, path, shown + (f":{port_text}" if port_text else ""))
