"""A lower floor for the tunnel connection's retransmission timeout, where the kernel has one.

Every stream of an agent rides one TCP connection, so one retransmission timeout (RTO)
stalls all of them at once. Fast recovery repairs most losses within a round trip, but a
retransmission that is itself lost is only noticed when later data is acknowledged; a
sender that has nothing more queued (the tunnel often has not: the link outruns the
process feeding it) then waits for the RTO. Linux floors the RTO at 200 ms, a hundred
LAN round trips: measured with 3% loss on loopback, 20-30 such timeouts stalled a
419 MB transfer for 5 of its 9 seconds (bench/loss.py prints the count).

Linux 6.15 and later let a socket choose its own floor (TCP_RTO_MIN_US). The RTO stays
the smoothed round trip plus the larger of four deviations and this floor, so on a long
path it still follows the path; a retransmission it sends too early (a peer that delays
its ACK longer) costs one segment, and the kernel undoes the congestion response when it
sees the original was not lost. Elsewhere (macOS, Windows, older Linux) this does nothing
and the kernel's own floor applies.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from tunnel.wire.endings import socket_under

__all__ = ["RTO_FLOOR", "TCP_RTO_MIN_US", "lower_rto_floor"]

TCP_RTO_MIN_US = getattr(socket, "TCP_RTO_MIN_US", 45)  # include/uapi/linux/tcp.h
RTO_FLOOR = 0.020  # seconds


def lower_rto_floor(transport: Any, floor: float = RTO_FLOOR) -> bool:
    """Set the TCP socket under `transport` to retransmit after `floor` seconds at the least
    instead of the kernel's 200 ms; whether the kernel took it."""
    if not sys.platform.startswith("linux"):
        return False  # no such option, and the number may mean something else there
    sock = socket_under(transport)
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_RTO_MIN_US, int(floor * 1_000_000))
    except OSError:
        return False  # an older kernel: ENOPROTOOPT
    return True
