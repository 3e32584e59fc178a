"""An outgoing TCP connect in the system calls it needs, not in twice as many.

Twisted's `BaseClient.doConnect` runs twice per connection and does everything both times:
it reads `SO_ERROR` of a socket just made, calls `connect()`, registers the socket for
reading and writing; when the socket turns writable it reads `SO_ERROR` again, calls
`connect()` again only to be told `EISCONN` (its own comment says this is not needed),
then unregisters both directions and registers reading again. The socket is also made
non-blocking twice, an `ioctl` each. That is twelve system calls for what takes seven: the
server makes one such connect for every stream it opens.

`doConnect` here keeps every decision Twisted makes and drops the repeats: the first
call connects without asking a new socket for an error it cannot have; the second takes
`SO_ERROR` (0 after the socket became writable or readable) as the answer; and the socket
stays registered for reading, so only writing is unregistered. The socket is made
non-blocking by `socket()` itself (`SOCK_NONBLOCK`), so only `tcp.Connection`'s own
`setblocking` (which accepted sockets need) remains. Errors are reported as
Twisted reports them (`getConnectError` of the same errno), from the same places.

It replaces two methods of Twisted's for the whole process, so it is a patch of the registry
(tunnel/wire/patches.py) and fails closed: it installs only over the exact `doConnect` and
`createInternetSocket` it was written against (Twisted 26.10, by source), only on Linux
(elsewhere, Twisted's retries cover platform quirks this was not tried on), and only where
the names it uses exist. (Offered upstream: see the README.)
"""

from __future__ import annotations

import socket
from errno import EALREADY, EINPROGRESS, EISCONN, EWOULDBLOCK
from os import strerror

from twisted.internet import error, tcp

from tunnel.wire.patches import REGISTRY, Patch, Replacement

__all__ = ["PATCH", "install"]

_USES = ("_connectDone", "failIfNotConnected", "stopWriting", "startReading", "startWriting")
_STILL_CONNECTING = (EINPROGRESS, EWOULDBLOCK, EALREADY)


def _create_socket(self) -> socket.socket:
    """A non-blocking socket in one system call (Twisted's: `socket()`, then an `ioctl`)."""
    return socket.socket(self.addressFamily, self.socketType | socket.SOCK_NONBLOCK)


def _do_connect(self) -> None:
    first = "doWrite" not in vars(self)
    self.doWrite = self.doConnect
    self.doRead = self.doConnect
    if not hasattr(self, "connector"):  # it failed meanwhile (as in Twisted's)
        return
    if first:
        try:
            result = self.socket.connect_ex(self.realAddress)
        except OSError as e:
            result = e.args[0]
        if result in _STILL_CONNECTING:
            self.startReading()
            self.startWriting()
            return
        if result and result != EISCONN:
            self.failIfNotConnected(error.getConnectError((result, strerror(result))))
            return
    else:
        # Called because the socket became writable or readable: connected, or failed.
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.failIfNotConnected(error.getConnectError((err, strerror(err))))
            return
    del self.doWrite
    del self.doRead
    self.stopWriting()  # reading stays registered; _connectDone's startReading keeps it
    self._connectDone()


def _twisted_names() -> str | None:
    if not hasattr(socket, "SOCK_NONBLOCK"):
        return "no SOCK_NONBLOCK on this platform"
    missing = [n for n in _USES if not hasattr(tcp.BaseClient, n)]
    return f"twisted.internet.tcp.BaseClient has no {', '.join(missing)}" if missing else None


PATCH = REGISTRY.register(
    Patch(
        "eager TCP connects",
        "an outgoing connect in 1 connect, 1 SO_ERROR read and 3 epoll_ctl (Twisted's: 2, 2 and 5)",
        replaces=(
            # As in Twisted 26.10: the source each replaces, by sha256 (patches.source_fingerprint).
            Replacement(tcp.BaseClient, "doConnect", "bf038b84cdf680af", ours=_do_connect),
            Replacement(tcp.BaseClient, "createInternetSocket", "935395a0647c719c", ours=_create_socket),
        ),
        platforms=("linux",),
        also_needs=_twisted_names,
    )
)


def install() -> bool:
    """Connect this way for every outgoing TCP connection of this process; False if Twisted changed."""
    return REGISTRY.install(PATCH.name)
