"""What both sides share: the wire (HTTP/2 CONNECT streams, TLS, relays) and its plumbing."""
