"""The agent's tunnel client as a table of states, driven in memory: inputs in, commands out,
with a clock of its own for the back-off (no reactor, no sockets). Each playbook is a life
the client lives: wake, locate, connect, lose, back off, drain, sleep, stop, a network change.
"""

from __future__ import annotations

import re

import pytest

from tunnel.agent.client_states import (
    ATTEMPT,
    CLIENT_TRANSITIONS,
    ClientInput,
    ClientMachine,
    ClientState,
    ClientStateError,
    Dial,
    DropConnection,
    FailWaiters,
    FindProxy,
    Locate,
    RetryIn,
    ServeWaiters,
)

S, In = ClientState, ClientInput


def backoff(failures: int) -> float:
    return min(0.2 * 2 ** (failures - 1), 30.0)  # the agent's policy without its jitter


class Life:
    """A machine and a clock: RetryIn commands become RETRY_DUE inputs when their time comes."""

    def __init__(self, located: bool = True) -> None:
        self.machine = ClientMachine(located=located, backoff=backoff)
        self.now = 0.0
        self.retry_at: float | None = None
        self.waiting = 0

    def feed(self, what: ClientInput, reason: str = "") -> list:
        commands = self.machine.handle(what, reason=reason, clients_waiting=self.waiting)
        if self.machine.state is not S.BACKING_OFF:
            self.retry_at = None
        for command in commands:
            if isinstance(command, RetryIn):
                self.retry_at = self.now + command.seconds
        return commands

    def wait(self, seconds: float) -> list:
        """Let time pass; the retry fires if it falls due."""
        self.now += seconds
        if self.retry_at is not None and self.retry_at <= self.now:
            self.retry_at = None
            return self.feed(In.RETRY_DUE)
        return []

    @property
    def state(self) -> ClientState:
        return self.machine.state


def test_every_pair_is_in_the_table_or_refused_and_refusal_changes_nothing():
    for state in ClientState:
        for what in ClientInput:
            machine = ClientMachine(located=True, backoff=backoff)
            machine.state = state
            if (state, what) in CLIENT_TRANSITIONS:
                machine.handle(what)
                target = CLIENT_TRANSITIONS[(state, what)]
                assert machine.state is target or target is ATTEMPT or what is In.FOUND_ASLEEP
            else:
                with pytest.raises(ClientStateError, match=re.escape(what.value)):
                    machine.handle(what)
                assert machine.state is state
    assert all(CLIENT_TRANSITIONS[(state, In.STOP)] is S.STOPPED for state in ClientState)


def test_start_wakes_locates_connects_and_serves_the_clients_waiting():
    life = Life()
    assert life.feed(In.START) == [FindProxy(forced=False)]
    assert life.feed(In.PROXY_FOUND) == [Locate(wake=True)]  # the server is woken at start
    assert life.state is S.LOCATING
    life.waiting = 2
    assert life.feed(In.CLIENT_WAITS) == []  # held: the locate is already under way
    assert life.feed(In.LOCATED) == [Dial()]
    assert life.feed(In.READY) == [ServeWaiters()]
    assert life.state is S.CONNECTED and not life.machine.stale


def test_failures_back_off_exponentially_and_a_waiting_client_cuts_the_wait_short():
    life = Life(located=False)
    life.feed(In.START)
    assert life.feed(In.PROXY_FOUND) == [Dial()]  # nothing to locate: the configured address
    delays = []
    for _ in range(4):
        [retry] = life.feed(In.CONNECT_FAILED, "connection refused")
        delays.append(retry.seconds)
        assert life.state is S.BACKING_OFF
        assert life.wait(retry.seconds - 0.01) == []  # not before its time
        assert life.wait(0.01) == [FindProxy(forced=False)]
        assert life.feed(In.PROXY_FOUND) == [Dial()]
    assert delays == [0.2, 0.4, 0.8, 1.6]
    [retry] = life.feed(In.CONNECT_FAILED, "connection refused")
    life.waiting = 1
    assert life.feed(In.CLIENT_WAITS) == [FindProxy(forced=False)]  # now, not in 3.2 s
    assert life.retry_at is None
    life.feed(In.PROXY_FOUND)
    life.feed(In.READY)
    assert life.machine.failures == 0


def test_a_lost_connection_is_redialled_at_once_and_the_address_asked_again():
    life = Life()
    for what in (In.START, In.PROXY_FOUND, In.LOCATED, In.READY):
        life.feed(what)
    assert life.feed(In.LOST) == [RetryIn(0.0)]  # it worked: no penalty
    assert life.machine.stale  # the server may have moved
    assert life.wait(0) == [FindProxy(forced=False)]
    assert life.feed(In.PROXY_FOUND) == [Locate(wake=False)]  # ask where it is, do not start it


def test_a_draining_server_gets_a_new_connection_without_waiting():
    life = Life(located=False)
    for what in (In.START, In.PROXY_FOUND, In.READY):
        life.feed(what)
    assert life.feed(In.DRAINING) == [Dial()]
    assert life.state is S.CONNECTING
    assert life.feed(In.READY) == [ServeWaiters()]


def test_a_stopped_server_sleeps_until_a_client_wakes_it():
    life = Life()
    life.feed(In.START)
    life.feed(In.PROXY_FOUND)
    life.feed(In.LOCATED)
    life.feed(In.READY)
    life.feed(In.LOST)  # the sleep schedule stopped it
    life.wait(0)
    assert life.feed(In.PROXY_FOUND) == [Locate(wake=False)]
    assert life.feed(In.FOUND_ASLEEP) == []
    assert life.state is S.ASLEEP and life.machine.may_need_waking
    assert life.wait(3600) == []  # asleep: nothing is tried
    life.waiting = 1
    assert life.feed(In.CLIENT_WAITS) == [FindProxy(forced=False)]
    assert life.feed(In.PROXY_FOUND) == [Locate(wake=True)]


def test_a_client_arriving_while_the_agent_learns_the_server_stopped_wakes_it_at_once():
    life = Life()
    life.feed(In.START)
    life.machine.want_wake = False  # as after the first wake
    life.feed(In.PROXY_FOUND)
    life.waiting = 1
    assert life.feed(In.FOUND_ASLEEP) == [FindProxy(forced=False)]
    assert life.feed(In.PROXY_FOUND) == [Locate(wake=True)]


def test_a_control_plane_failure_tells_the_waiting_clients_and_backs_off():
    life = Life()
    life.feed(In.START)
    life.feed(In.PROXY_FOUND)
    life.waiting = 3
    assert life.feed(In.LOCATE_FAILED, "wake endpoint answered 500") == [
        FailWaiters("wake endpoint answered 500"),
        RetryIn(0.2),
    ]


def test_the_user_s_wake_goes_now_and_asks_the_control_plane_first():
    life = Life()
    life.feed(In.START)
    life.feed(In.PROXY_FOUND)
    life.feed(In.LOCATED)
    life.feed(In.CONNECT_FAILED, "no answer")
    assert life.feed(In.WAKE_ASKED) == [FindProxy(forced=False)]
    assert life.feed(In.PROXY_FOUND) == [Locate(wake=True)]


def test_a_network_change_drops_the_connection_and_finds_the_proxy_and_the_server_again():
    life = Life()
    for what in (In.START, In.PROXY_FOUND, In.LOCATED, In.READY):
        life.feed(what)
    assert life.feed(In.NETWORK_CHANGED) == [DropConnection(), FindProxy(forced=True)]
    assert life.state is S.FINDING_PROXY and life.machine.stale
    assert life.feed(In.NETWORK_CHANGED) == [DropConnection(), FindProxy(forced=True)]  # again: anew
    assert life.feed(In.PROXY_FOUND) == [Locate(wake=False)]
    life.feed(In.LOCATED)
    assert life.feed(In.NETWORK_CHANGED) == [DropConnection(), FindProxy(forced=True)]  # mid-dial too
    life.feed(In.PROXY_FOUND)
    life.feed(In.LOCATED)
    life.feed(In.CONNECT_FAILED, "the old network's proxy is gone")
    assert life.state is S.BACKING_OFF
    assert life.feed(In.NETWORK_CHANGED) == [DropConnection(), FindProxy(forced=True)]  # no back-off left
    assert life.machine.failures == 0


def test_asleep_a_network_change_waits_for_a_client():
    life = Life()
    life.feed(In.START)
    life.feed(In.PROXY_FOUND)
    life.feed(In.FOUND_ASLEEP)
    assert life.feed(In.NETWORK_CHANGED) == []
    assert life.state is S.ASLEEP


def test_stop_ends_everything_from_any_state_and_tells_the_clients():
    for state in ClientState:
        machine = ClientMachine(located=True, backoff=backoff)
        machine.state = state
        assert machine.handle(In.STOP) == [FailWaiters("agent is stopping")]
        assert machine.state is S.STOPPED
        with pytest.raises(ClientStateError):
            machine.handle(In.LOST)  # a stopped client hears of no connection
