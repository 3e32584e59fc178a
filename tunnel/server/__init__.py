"""The server: the TLS listener and its fronts, its opener (dials behind the egress policy), metrics, health check."""
