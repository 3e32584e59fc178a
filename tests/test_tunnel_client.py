"""The agent's connection to the server, as its log and status page report a failed attempt."""

from __future__ import annotations

import time

import pytest
from support import Listener, agent_config, start_twistd, wait_until
from twisted.internet import error
from twisted.python.failure import Failure

from tunnel.agent.tunnel_client import attempt_message


@pytest.mark.processes
def test_a_server_that_hangs_up_during_the_handshake_is_one_plain_line(certs, tmp_path):
    """Each failed attempt is one line a person can read: no Failure repr, nothing that looks
    like a traceback (the tests read a traceback in a log as an unhandled error)."""
    server = Listener(lambda conn: conn.close())  # accepts and closes at once: a stopping task
    agent = start_twistd("agent", agent_config(certs, server.port), tmp_path)
    try:
        wait_until(lambda: "tunnel to" in agent.log() and "failed:" in agent.log(), 15)
        time.sleep(0.5)
    finally:
        agent.stop()
        server.close()
    failed = [line for line in agent.log().splitlines() if "failed:" in line]
    assert failed and len(server.accepted) >= 1, agent.log()
    assert all("Traceback" not in line and "Failure instance" not in line for line in failed), failed
    agent.assert_no_unhandled_errors()


def test_a_nested_failure_is_told_by_its_own_message():
    """Seen in CI when a stopping server closed the agent's new connection: 'An error occurred
    while connecting: [Failure instance: Traceback (failure with no frames): ...ConnectionDone'."""
    nested = Failure(error.ConnectError(string=Failure(error.ConnectionDone())))
    assert attempt_message(nested) == "the connection ended while connecting (Connection was closed cleanly.)"
    plain = Failure(error.ConnectionRefusedError())
    assert attempt_message(plain) == plain.getErrorMessage()
