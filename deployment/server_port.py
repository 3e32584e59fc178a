"""The port the deployed server listens on unless the stack says otherwise, defined once.

443, not a high port: a stock corporate squid allows CONNECT to 443 only (`SSL_ports`), and
networks that filter ports commonly pass 80 and 443 alone. The server image grants its own
interpreter CAP_NET_BIND_SERVICE so it binds 443 as uid 10001 wherever the kernel keeps
`net.ipv4.ip_unprivileged_port_start` at 1024. The stack's `containerPort` still takes any port;
the agent, the control plane, the health check and the ingress rules all follow it.
"""

SERVER_PORT = 443
