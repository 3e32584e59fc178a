"""Naming TLS interception: a certificate the server's address presented that our CA did not issue.

Behind a TLS-inspecting proxy (a corporate CA forging certificates on the fly) the
handshake fails with `certificate verify failed`, which says nothing a user can act on.
What was presented says it all: a leaf our CA did not sign means something in the path
answered for the server. Pure: certificates in, words out; the agent and `fluidity
doctor` both use it, and neither sends a byte over the connection that failed.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature


def intercepted_by(presented: list[x509.Certificate], ca: x509.Certificate) -> str | None:
    """The issuer that answered instead of our CA's server, or None when our CA issued the leaf."""
    if not presented:
        return None
    leaf = presented[0]
    try:
        leaf.verify_directly_issued_by(ca)
        return None
    except (ValueError, TypeError, InvalidSignature):  # another issuer's name, key type or signature
        return leaf.issuer.rfc4514_string() or "(an issuer with no name)"


def interception_message(issuer: str, server: str, via: str = "") -> str:
    """`server` is the host:port dialled, `via` the proxy it went through, if any."""
    return (
        f"something in the network path intercepts TLS: {server}{f' (through {via})' if via else ''} presented a "
        f"certificate"
        f" issued by {issuer}, not by your CA; nothing was sent over it. Ask the network team for a TLS-inspection "
        f"bypass"
        f" for {server}: the tunnel is mutually authenticated TLS and cannot work through inspection"
    )
