"""Twisted's transports as the fronts use them, named for the type checker.

Twisted spreads what a TCP or TLS connection offers over several interfaces (a transport,
a producer, a consumer, an SSL transport, a negotiated protocol), and types a Protocol's
`transport` as an Optional `ITransport`. A protocol whose methods run only while it is
connected declares its transport as one of these instead. They are names for checking
only: nothing adapts to them at run time."""

from __future__ import annotations

from twisted.internet.interfaces import IConsumer, INegotiated, IPushProducer, ISystemHandle, ITCPTransport

__all__ = ["IConnection", "ITLSConnection"]


class IConnection(ITCPTransport, IPushProducer, IConsumer):
    """A TCP connection, TLS over one, or a tunnel stream: it writes, takes a producer,
    can be paused, half-closed and aborted."""


class ITLSConnection(IConnection, INegotiated, ISystemHandle):
    """Either side of an agent's TLS connection: the peer's certificate, the ALPN choice,
    and pyOpenSSL's connection under it (`getHandle`)."""
