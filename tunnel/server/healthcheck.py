"""`python -m tunnel.server.healthcheck [PORT]`: does the server's TLS listener answer?

It probes 127.0.0.1 (the listener binds every address by default), or $FLUIDITY_HOST where
the server is told to bind one address only.

The container's HEALTHCHECK. It completes a TLS 1.3 handshake with the local listener
(without a client certificate: the server asks for one only after it has proved itself)
and checks that a certificate was presented. Exit 0 healthy, 1 not.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys

from deployment.server_port import SERVER_PORT


def probe(port: int, host: str = "127.0.0.1", timeout: float = 3.0) -> str | None:
    """None when healthy, else what went wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # liveness, not trust: the agent does the real check
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, context.wrap_socket(raw) as tls:
            if not tls.getpeercert(binary_form=True):
                return "no certificate presented"
    except (OSError, ssl.SSLError) as e:
        return f"{host}:{port}: {e}"
    return None


def main(argv: list[str]) -> int:
    port = int(argv[1]) if len(argv) > 1 else int(os.environ.get("FLUIDITY_PORT", str(SERVER_PORT)))
    # The listener's own address where it binds one (not every address): FLUIDITY_HOST.
    host = os.environ.get("FLUIDITY_HOST", "").strip() or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    problem = probe(port, host)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
