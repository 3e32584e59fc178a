"""The agent's proxy port takes a burst of clients while it is busy: none waits for a SYN
retransmission (Twisted's default accept queue of 50 would drop most of them)."""

from __future__ import annotations

import signal
import socket
import time

from support import agent_config, server_config, start_twistd, wait_connected

BURST = 300


def test_a_burst_of_clients_while_the_agent_is_busy_is_queued_not_dropped(certs, echo, tmp_path):
    server = start_twistd("server", server_config(certs), tmp_path)
    agent = start_twistd("agent", agent_config(certs, server.port), tmp_path)
    clients: list[socket.socket] = []
    try:
        wait_connected(agent)
        agent.process.send_signal(signal.SIGSTOP)  # busy: accepts nothing for now
        try:
            refused = 0
            for _ in range(BURST):
                s = socket.socket()
                s.settimeout(0.5)  # a dropped SYN is retried after 1 s: this fails then
                try:
                    s.connect(("127.0.0.1", agent.port))
                except OSError:
                    refused += 1
                    s.close()
                    if refused >= 10:
                        break
                    continue
                clients.append(s)
        finally:
            agent.process.send_signal(signal.SIGCONT)
        assert refused == 0, f"{refused} connections of a burst of {BURST} were not queued"
        authority = f"127.0.0.1:{echo.port}".encode()
        for s in clients:
            s.settimeout(15)
            s.sendall(b"CONNECT " + authority + b" HTTP/1.1\r\nHost: " + authority + b"\r\n\r\n")
        deadline = time.monotonic() + 30
        for i, s in enumerate(clients):
            head = b""
            while b"\r\n\r\n" not in head and time.monotonic() < deadline:
                head += s.recv(4096) or b"!"
            assert head.startswith(b"HTTP/1.1 200"), f"client {i}: {head[:80]!r}"
            s.sendall(b"ping %d" % i)
            assert s.recv(64) == b"ping %d" % i
    finally:
        for s in clients:
            s.close()
        assert agent.stop() == 0
        assert server.stop() == 0
    agent.assert_no_unhandled_errors()
