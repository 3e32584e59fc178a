"""The agent's tunnel client as one table of states, sans-IO.

`TunnelClient` (tunnel_client.py) does the I/O: it looks for the proxy, asks the control
plane, dials, keeps timers, and feeds what happened here as an input. `ClientMachine` keeps
the state and the facts that decide the next step (is the address stale, does a client want
the server woken, how many attempts failed in a row) and answers each input with commands
for the I/O side, as h11 and mitmproxy's layers do. A pair (state, input) the table lacks is a
bug in the I/O side and raises `ClientStateError`; nothing is silently ignored.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "ATTEMPT",
    "CLIENT_TRANSITIONS",
    "ClientInput",
    "ClientMachine",
    "ClientState",
    "ClientStateError",
    "Command",
    "Dial",
    "DropConnection",
    "FailWaiters",
    "FindProxy",
    "Locate",
    "RetryIn",
    "ServeWaiters",
]


class ClientState(enum.Enum):
    STOPPED = "stopped"  # not started, or stopped: nothing is tried
    FINDING_PROXY = "finding the proxy"  # upstream_proxy: auto looks for its PAC file (at once when it need not)
    LOCATING = "asking the control plane"  # where the server is, waking it when a client wants it
    ASLEEP = "server stopped"  # the control plane says so: the next client wakes it
    CONNECTING = "connecting"  # TCP (through the proxy), TLS and the HTTP/2 preface
    CONNECTED = "connected"  # streams open on the current connection
    BACKING_OFF = "waiting to retry"  # after a failure, for the back-off's delay


class ClientInput(enum.Enum):
    START = "started"
    STOP = "stopped"
    PROXY_FOUND = "the proxy look-up is done"
    LOCATED = "the control plane gave the server's address"
    FOUND_ASLEEP = "the control plane says the server is stopped"
    LOCATE_FAILED = "the control plane could not be asked"
    READY = "the server's HTTP/2 SETTINGS arrived"
    CONNECT_FAILED = "the attempt failed (TCP, proxy, TLS, or no answer in time)"
    DRAINING = "the server drains the current connection"
    LOST = "the current connection was lost"
    RETRY_DUE = "the back-off's delay is over"
    CLIENT_WAITS = "a local client waits for the tunnel"
    WAKE_ASKED = "the user asked to wake the server"
    NETWORK_CHANGED = "the network changed (a new address, proxy or route)"


class _Attempt(enum.Enum):
    NEXT = "the next attempt: ask the control plane first when the address may be stale, else dial"


ATTEMPT = _Attempt.NEXT
S, In = ClientState, ClientInput  # short names for the table
Target = ClientState | _Attempt

# Every step the client can take. ATTEMPT resolves to LOCATING or CONNECTING (see `_attempt`).
CLIENT_TRANSITIONS: dict[tuple[ClientState, ClientInput], Target] = {
    (S.STOPPED, In.START): S.FINDING_PROXY,
    (S.STOPPED, In.STOP): S.STOPPED,
    (S.STOPPED, In.CLIENT_WAITS): S.STOPPED,  # held until the start, or until its wait is over
    (S.FINDING_PROXY, In.PROXY_FOUND): ATTEMPT,
    (S.FINDING_PROXY, In.CLIENT_WAITS): S.FINDING_PROXY,
    (S.FINDING_PROXY, In.WAKE_ASKED): S.FINDING_PROXY,
    (S.FINDING_PROXY, In.NETWORK_CHANGED): S.FINDING_PROXY,  # looked for anew
    (S.LOCATING, In.LOCATED): S.CONNECTING,
    (S.LOCATING, In.FOUND_ASLEEP): S.ASLEEP,  # and with a client waiting, on at once as CLIENT_WAITS
    (S.LOCATING, In.LOCATE_FAILED): S.BACKING_OFF,
    (S.LOCATING, In.CLIENT_WAITS): S.LOCATING,
    (S.LOCATING, In.WAKE_ASKED): S.LOCATING,
    (S.LOCATING, In.NETWORK_CHANGED): S.FINDING_PROXY,
    (S.ASLEEP, In.CLIENT_WAITS): S.FINDING_PROXY,  # this client wakes it
    (S.ASLEEP, In.WAKE_ASKED): S.FINDING_PROXY,
    (S.ASLEEP, In.NETWORK_CHANGED): S.ASLEEP,  # nothing to redo until a client wants the server
    (S.CONNECTING, In.READY): S.CONNECTED,
    (S.CONNECTING, In.CONNECT_FAILED): S.BACKING_OFF,
    (S.CONNECTING, In.CLIENT_WAITS): S.CONNECTING,
    (S.CONNECTING, In.WAKE_ASKED): S.CONNECTING,
    (S.CONNECTING, In.NETWORK_CHANGED): S.FINDING_PROXY,
    (S.CONNECTED, In.DRAINING): ATTEMPT,  # a new connection while the old one finishes
    (S.CONNECTED, In.LOST): S.BACKING_OFF,  # no delay after a connection that worked
    (S.CONNECTED, In.CLIENT_WAITS): S.CONNECTED,
    (S.CONNECTED, In.WAKE_ASKED): S.CONNECTED,
    (S.CONNECTED, In.NETWORK_CHANGED): S.FINDING_PROXY,  # the connection may be dead without a word
    (S.BACKING_OFF, In.RETRY_DUE): S.FINDING_PROXY,
    (S.BACKING_OFF, In.CLIENT_WAITS): S.FINDING_PROXY,  # a client waits: now, not at the end of the delay
    (S.BACKING_OFF, In.WAKE_ASKED): S.FINDING_PROXY,
    (S.BACKING_OFF, In.NETWORK_CHANGED): S.FINDING_PROXY,
}
for _state in ClientState:  # stopping is allowed from anywhere
    CLIENT_TRANSITIONS[(_state, In.STOP)] = S.STOPPED


class ClientStateError(RuntimeError):
    """An input the table has no step for in the current state: the I/O side's mistake."""


# -- commands: what the I/O side does next -------------------------------------------------
@dataclass(frozen=True)
class FindProxy:  # look for the PAC file if it is time (`forced`: the network changed)
    forced: bool = False


@dataclass(frozen=True)
class Locate:  # ask the control plane where the server is
    wake: bool  # and start it if it is stopped


@dataclass(frozen=True)
class Dial:  # connect to the located address (through the proxy, if any)
    pass


@dataclass(frozen=True)
class RetryIn:  # feed RETRY_DUE after this many seconds
    seconds: float


@dataclass(frozen=True)
class ServeWaiters:  # the clients held for the tunnel may open their streams
    pass


@dataclass(frozen=True)
class FailWaiters:  # the clients held for the tunnel are told 503, with this reason
    reason: str


@dataclass(frozen=True)
class DropConnection:  # close the current connection (its streams end) and cancel any attempt: both may be dead
    pass


Command = FindProxy | Locate | Dial | RetryIn | ServeWaiters | FailWaiters | DropConnection


class ClientMachine:
    """The tunnel client's state and the facts behind its next step; `handle` takes one input."""

    def __init__(self, *, located: bool, backoff: Callable[[int], float]) -> None:
        """`located`: the address comes from the control plane (a lifecycle block), so it is
        asked first and again after every failure; `backoff(n)`: the delay after n failures."""
        self.state = ClientState.STOPPED
        self.located = located
        self.stale = located  # ask the control plane before dialling
        self.want_wake = located  # the server is woken at start
        self.failures = 0  # attempts failed in a row
        self.waiting = 0  # local clients held for the tunnel
        self._backoff = backoff

    @property
    def asleep(self) -> bool:
        return self.state is ClientState.ASLEEP

    @property
    def may_need_waking(self) -> bool:
        """A client held now may wait for the server to start (the wake timeout applies)."""
        return self.located and (self.stale or self.asleep)

    def handle(self, what: ClientInput, *, reason: str = "", clients_waiting: int = 0) -> list[Command]:
        """One input; the commands it calls for, in order. `reason` goes with a failure;
        `clients_waiting` is how many clients are held as the input arrives."""
        self.waiting = clients_waiting
        target = CLIENT_TRANSITIONS.get((self.state, what))
        if target is None:
            raise ClientStateError(f"tunnel client: {what.value} while {self.state.value}")
        before, commands = self.state, self._learn(what, reason)
        self.state = self._attempt() if target is ATTEMPT else target
        again = what is In.NETWORK_CHANGED and self.state is S.FINDING_PROXY  # looked for anew
        if self.state is not before or again:
            commands += self._on_entering(self.state, what)
        if what is In.FOUND_ASLEEP and self.waiting:  # a client came while we asked: it wakes the server
            commands += self.handle(In.CLIENT_WAITS, clients_waiting=clients_waiting)
        return commands

    def _learn(self, what: ClientInput, reason: str) -> list[Command]:
        """What an input tells about the server and the attempts, whatever state it leads to;
        the commands that go with it in every state."""
        if what is In.WAKE_ASKED and self.located and self.state is not S.CONNECTED:
            self.want_wake = self.stale = True
        elif what is In.CLIENT_WAITS and self.asleep:
            self.want_wake = True
        elif what is In.LOCATED:
            self.stale = self.want_wake = False
        elif what in (In.LOCATE_FAILED, In.CONNECT_FAILED):
            self.failures += 1
            self.stale = self.located  # the server may have moved or stopped
        elif what is In.LOST:
            self.stale = self.located
        elif what is In.NETWORK_CHANGED:
            self.stale, self.failures = self.located, 0
        elif what is In.READY:
            self.failures = 0
        if what is In.LOCATE_FAILED:
            return [FailWaiters(reason)]
        if what is In.STOP:
            return [FailWaiters("agent is stopping")]
        return []

    def _attempt(self) -> ClientState:
        return S.LOCATING if self.located and self.stale else S.CONNECTING

    def _on_entering(self, state: ClientState, what: ClientInput) -> list[Command]:
        commands: list[Command] = []
        if what is In.NETWORK_CHANGED and state is S.FINDING_PROXY:
            commands.append(DropConnection())  # and any attempt under way: it used the old network
        if state is S.FINDING_PROXY:
            commands.append(FindProxy(forced=what is In.NETWORK_CHANGED))
        elif state is S.LOCATING:
            commands.append(Locate(wake=self.want_wake or self.waiting > 0))
        elif state is S.CONNECTING:
            commands.append(Dial())
        elif state is S.CONNECTED:
            commands.append(ServeWaiters())
        elif state is S.BACKING_OFF:
            commands.append(RetryIn(self._backoff(self.failures) if self.failures else 0.0))
        return commands
