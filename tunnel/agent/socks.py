"""SOCKS5 (RFC 1928) for the agent's port, as a sans-IO state machine.

Only what a proxy client needs from a personal tunnel: the no-authentication method and
CONNECT to a domain name, IPv4 or IPv6 address. Feed bytes to `receive_data`; it returns
the events that completed (`Greeting`, then `Connect`) and raises `SocksError` carrying
the reply code to send before closing. `trailing` holds bytes that came after the request
(a client's first bytes, sent without waiting for the reply).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from tunnel.wire.addresses import BadAddress, Destination, parse_authority

VERSION = 5
NO_AUTH = 0x00
NO_ACCEPTABLE_METHOD = 0xFF
CMD_CONNECT = 0x01
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 0x01, 0x03, 0x04

SUCCEEDED = 0x00
GENERAL_FAILURE = 0x01
NOT_ALLOWED = 0x02
NETWORK_UNREACHABLE = 0x03
HOST_UNREACHABLE = 0x04
CONNECTION_REFUSED = 0x05
TTL_EXPIRED = 0x06
COMMAND_NOT_SUPPORTED = 0x07
ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class SocksError(Exception):
    def __init__(self, reply: int | None, message: str) -> None:
        super().__init__(message)
        self.reply = reply  # None: nothing can be said in SOCKS terms (bad greeting); just close


@dataclass(frozen=True)
class Greeting:
    methods: bytes


@dataclass(frozen=True)
class Connect:
    destination: Destination


def reply(code: int) -> bytes:
    """VER REP RSV ATYP BND.ADDR BND.PORT, with an all-zero IPv4 bound address."""
    return bytes([VERSION, code, 0, ATYP_IPV4, 0, 0, 0, 0, 0, 0])


def reply_for_status(status: int) -> int:
    """The tunnel's HTTP-style outcome in SOCKS words."""
    return {
        403: NOT_ALLOWED,
        502: CONNECTION_REFUSED,
        504: TTL_EXPIRED,
        400: HOST_UNREACHABLE,
        429: GENERAL_FAILURE,
    }.get(status, GENERAL_FAILURE)


class Socks5Server:
    """Greeting, then one request; anything else is a SocksError."""

    def __init__(self) -> None:
        self._buffer = b""
        self._state = "greeting"
        self.trailing = b""

    def receive_data(self, data: bytes) -> list:
        if self._state == "done":
            self.trailing += data  # the client's first bytes, ahead of our reply
            return []
        self._buffer += data
        events: list = []
        while True:
            event: Greeting | Connect | None
            if self._state == "greeting":
                event = self._greeting()
            elif self._state == "request":
                event = self._request()
            else:
                return events
            if event is None:
                return events
            events.append(event)

    def choose(self, greeting: Greeting) -> bytes:
        """The method-selection answer; the caller closes when it is NO_ACCEPTABLE_METHOD."""
        if NO_AUTH in greeting.methods:
            self._state = "request"
            return bytes([VERSION, NO_AUTH])
        self._state = "refused"
        return bytes([VERSION, NO_ACCEPTABLE_METHOD])

    def _greeting(self) -> Greeting | None:
        if len(self._buffer) < 2:
            return None
        version, count = self._buffer[0], self._buffer[1]
        if version != VERSION:
            raise SocksError(None, f"not SOCKS5 (version byte {version})")
        if count == 0:
            raise SocksError(None, "SOCKS5 greeting offers no authentication method")
        if len(self._buffer) < 2 + count:
            return None
        methods, self._buffer = self._buffer[2 : 2 + count], self._buffer[2 + count :]
        self._state = "choosing"
        return Greeting(methods)

    def _request(self) -> Connect | None:
        buf = self._buffer
        if len(buf) < 5:
            return None
        version, command, _, atyp = buf[0], buf[1], buf[2], buf[3]
        if version != VERSION:
            raise SocksError(GENERAL_FAILURE, f"bad SOCKS5 request version {version}")
        if atyp == ATYP_IPV4:
            end = 4 + 4
            host = lambda: str(ipaddress.IPv4Address(buf[4:8]))  # noqa: E731
        elif atyp == ATYP_IPV6:
            end = 4 + 16
            host = lambda: str(ipaddress.IPv6Address(buf[4:20]))  # noqa: E731
        elif atyp == ATYP_DOMAIN:
            end = 5 + buf[4]
            host = lambda: buf[5:end].decode("ascii")  # noqa: E731
        else:
            raise SocksError(ADDRESS_TYPE_NOT_SUPPORTED, f"SOCKS5 address type {atyp} is not supported")
        if len(buf) < end + 2:
            return None
        if command != CMD_CONNECT:
            raise SocksError(COMMAND_NOT_SUPPORTED, f"SOCKS5 command {command} is not supported (only CONNECT)")
        (port,) = struct.unpack("!H", buf[end : end + 2])
        try:
            name = host()
            authority = f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
            destination = parse_authority(authority)
        except (UnicodeDecodeError, BadAddress, ValueError) as e:
            raise SocksError(HOST_UNREACHABLE, f"bad SOCKS5 destination: {e}") from None
        self.trailing, self._buffer = buf[end + 2 :], b""
        self._state = "done"
        return Connect(destination)
