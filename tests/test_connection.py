"""The sans-IO tunnel core, bytes in and bytes out: no sockets, no reactor, no clock but
the numbers passed in. An agent-side and a server-side TunnelConnection talk by handing
each other `data_to_send()`."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import pytest

from tunnel.wire import connection as core
from tunnel.wire.addresses import parse_authority

DEST = parse_authority("example.test:443")


class Pair:
    def __init__(self, keepalive_interval: float = 0.0, keepalive_timeout: float = 10.0) -> None:
        self.agent = core.TunnelConnection(
            client_side=True,
            limits=core.TunnelLimits(keepalive_interval=keepalive_interval, keepalive_timeout=keepalive_timeout),
        )
        self.server = core.TunnelConnection(client_side=False, limits=core.TunnelLimits(max_streams=10))
        self.agent.start(0.0)
        self.server.start(0.0)
        self.events = {"agent": [], "server": []}
        self.pump()

    def pump(self, now: float = 0.0, rounds: int = 20) -> None:
        """Move what both sides wrote until neither has more; collect every event either
        queued meanwhile (local verbs included: none is lost to an ignored return value)."""
        for _ in range(rounds):  # bounded: each round moves what both sides queued
            self.collect()
            to_server, to_agent = self.agent.data_to_send(), self.server.data_to_send()
            if not to_server and not to_agent:
                return
            if to_server:
                self.server.receive(to_server, now)
            if to_agent:
                self.agent.receive(to_agent, now)

    def collect(self) -> None:
        self.events["server"] += self.server.events()
        self.events["agent"] += self.agent.events()

    def of(self, side: str, kind) -> list:
        return [e for e in self.events[side] if isinstance(e, kind)]


def ticked(conn: core.TunnelConnection, now: float) -> list:
    conn.tick(now)
    return conn.events()


def test_a_connect_is_requested_answered_and_carries_bytes_both_ways_then_closes_cleanly():
    p = Pair()
    assert p.of("agent", core.PeerReady) and p.of("server", core.PeerReady)
    sid = p.agent.open_stream(DEST)
    p.agent.send(sid, b"early bytes")  # allowed before the 200
    p.pump()
    [requested] = p.of("server", core.StreamRequested)
    assert requested.destination.authority == "example.test:443"  # a value, not the core's record
    assert b"".join(e.data for e in p.of("server", core.DataReceived)) == b"early bytes"
    p.server.respond(sid)
    p.server.send(sid, b"reply")
    p.pump()
    assert [e.sid for e in p.of("agent", core.StreamAnswered)] == [sid]
    assert b"".join(e.data for e in p.of("agent", core.DataReceived)) == b"reply"
    p.agent.end(sid)
    p.pump()
    assert p.agent.stream_state(sid) is core.StreamState.LOCAL_ENDED
    assert p.server.stream_state(sid) is core.StreamState.REMOTE_ENDED
    p.server.end(sid)
    p.pump()
    assert p.agent.open_streams == p.server.open_streams == 0  # no record of it is kept
    assert p.agent.stream_state(sid) is p.server.stream_state(sid) is core.StreamState.CLOSED
    assert [e.clean for e in p.of("agent", core.StreamClosed)] == [True]
    assert [e.clean for e in p.of("server", core.StreamClosed)] == [True]


def test_every_input_returns_nothing_and_its_events_wait_once_until_taken():
    """h11's discipline: a verb's events cannot be dropped by a caller that ignores a return
    value; they wait in order, and `events()` hands each out once."""
    p = Pair()
    sid = p.agent.open_stream(DEST)
    p.pump()
    assert p.server.respond(sid) is None and p.server.send(sid, b"reply") is None
    assert p.agent.reset(sid, "the client went away") is None
    [closed] = p.agent.events()
    assert closed == core.StreamClosed(sid, "the client went away", False)
    assert p.agent.events() == []  # taken once
    p.pump()
    assert [e.sid for e in p.of("server", core.StreamClosed)] == [sid]


def test_a_refusal_carries_its_status_and_reason_to_the_agent():
    p = Pair()
    sid = p.agent.open_stream(DEST)
    p.pump()
    p.server.refuse(sid, 403, 'egress policy refuses "example.test:443"')
    p.pump()
    [refused] = p.of("agent", core.StreamRefused)
    assert refused.error.status == 403 and refused.error.reason == 'egress policy refuses "example.test:443"'


def test_bytes_wait_for_the_window_and_go_once_the_agent_has_taken_what_it_got():
    p = Pair()
    sid = p.agent.open_stream(DEST)
    p.pump()
    p.server.respond(sid)
    p.server.send(sid, b"x" * (core.STREAM_WINDOW + 1000))
    p.pump()
    assert p.of("server", core.SendBlocked)
    received = sum(len(e.data) for e in p.of("agent", core.DataReceived))
    assert received == core.STREAM_WINDOW  # not a byte more than the window
    p.agent.acknowledge(sid)  # the consumer took it: the window opens again
    p.pump()
    assert sum(len(e.data) for e in p.of("agent", core.DataReceived)) == core.STREAM_WINDOW + 1000
    assert any(isinstance(e, core.SendUnblocked) for e in p.events["server"])


CONNECT = [(":method", "CONNECT"), (":authority", "example.test:443")]


def _open(flooder) -> int:
    sid = flooder.get_next_available_stream_id()
    flooder.send_headers(sid, CONNECT)
    return sid


def _reset(flooder) -> None:
    flooder.reset_stream(_open(flooder))


FLOODS = {  # one frame of each flood the core bounds, as an abusive peer sends it
    "stream resets": _reset,  # Rapid Reset (CVE-2023-44487)
    "SETTINGS frames": lambda flooder: flooder.update_settings({}),
    "PING frames": lambda flooder: flooder.ping(b"12345678"),
    "empty DATA frames": None,  # on one open stream, below
    "WINDOW_UPDATE frames": lambda flooder: flooder.increment_flow_control_window(1),
}


@pytest.mark.parametrize("what", sorted(core.FLOOD_LIMITS))
def test_a_flood_of_each_kind_ends_the_connection_with_enhance_your_calm_and_its_limit_does_not(what):
    """Bytes in, no process: the limit itself is let through, one more frame within the
    window ends the connection with GOAWAY(ENHANCE_YOUR_CALM), saying which flood."""
    assert set(FLOODS) == set(core.FLOOD_LIMITS)
    flooder = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    flooder.initiate_connection()
    server = core.TunnelConnection(client_side=False)
    server.start(0.0)
    server.receive(flooder.data_to_send(), 0.0)
    flooder.receive_data(server.data_to_send())
    events = server.events()
    send = FLOODS[what]
    if send is None:
        sid = _open(flooder)

        def send(flooder):
            flooder.send_data(sid, b"")

    def finished() -> list:
        return [e for e in events if isinstance(e, core.Finished)]

    already = 1 if what == "SETTINGS frames" else 0  # the preface's own SETTINGS frame counts
    for _ in range(core.FLOOD_LIMITS[what] - already):
        send(flooder)
        server.receive(flooder.data_to_send(), 1.0)
        events += server.events()
        flooder.receive_data(server.data_to_send())
    assert finished() == []  # the limit itself is an honest peer's worst case
    send(flooder)
    server.receive(flooder.data_to_send(), 1.0)
    events += server.events()
    [ended] = finished()
    assert ended.alarming and what in ended.reason
    answer = flooder.receive_data(server.data_to_send())
    goaway = [e for e in answer if type(e).__name__ == "ConnectionTerminated"]
    assert goaway and goaway[0].error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


def test_the_same_frames_spread_over_windows_are_no_flood():
    flooder = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    flooder.initiate_connection()
    server = core.TunnelConnection(client_side=False)
    server.start(0.0)
    server.receive(flooder.data_to_send(), 0.0)
    limit = core.FLOOD_LIMITS["PING frames"]
    for n in range(3 * limit):
        flooder.ping(n.to_bytes(8, "big"))
        server.receive(flooder.data_to_send(), 1.0 + n * (core.FLOOD_WINDOW / limit) * 1.01)
        flooder.receive_data(server.data_to_send())
        assert not [e for e in server.events() if isinstance(e, core.Finished)], n


def test_a_ping_is_sent_on_time_and_an_unanswered_one_is_overdue():
    p = Pair(keepalive_interval=15.0, keepalive_timeout=10.0)
    assert p.agent.next_deadline() == 15.0
    assert ticked(p.agent, 14.9) == [] and p.agent.data_to_send() == b""
    assert ticked(p.agent, 15.0) == []
    ping = p.agent.data_to_send()
    assert ping  # a PING frame
    assert p.agent.next_deadline() == 25.0
    p.server.receive(ping, 15.0)
    p.agent.receive(p.server.data_to_send(), 15.1)  # the ACK
    assert [e for e in ticked(p.agent, 25.0) if not isinstance(e, core.PeerReady)] == []  # answered
    p.agent.data_to_send()
    assert ticked(p.agent, 40.0) == [] and p.agent.next_deadline() == 40.0 + 10.0  # sent at 40, unanswered
    assert ticked(p.agent, 50.0) == [core.PingOverdue(10.0)]


def test_a_draining_server_tells_the_agent_and_finishes_when_its_last_stream_is_done():
    p = Pair()
    sid = p.agent.open_stream(DEST)
    p.pump()
    p.server.respond(sid)
    p.server.begin_drain()
    p.pump()
    assert p.of("agent", core.Draining) and p.agent.draining
    assert not p.of("server", core.Finished)  # a stream is still open
    try:
        p.agent.open_stream(DEST)
        raise AssertionError("a draining connection took a new stream")
    except core.OpenFailed as e:
        assert e.status == 503
    p.agent.end(sid)
    p.server.end(sid)
    p.pump()
    assert p.of("server", core.Finished) == [core.Finished()]  # orderly: nothing to warn about


def test_a_stream_opened_after_a_quiet_spell_probes_the_connection():
    """Issue 25, item 7: a middlebox that forgot the flow drops what we send silently; the
    stream that finds the connection quiet sends a PING with it, due within the probe
    timeout rather than at the next keepalive (15 s) plus its timeout (10 s)."""
    p = Pair(keepalive_interval=15.0, keepalive_timeout=10.0)
    sid = p.agent.open_stream(parse_authority("example.com:443"))
    p.agent.probe(0.5, 3.0)  # heard from the server 0.5 s ago (the preface): not quiet yet
    assert p.agent.next_deadline() == 15.0
    p.agent.probe(2.0, 3.0)  # quiet for 2 s: PING now, due by 5.0
    assert p.agent.next_deadline() == 5.0
    sent = p.agent.data_to_send()
    assert b"\x00\x00\x08\x06\x00" in sent  # a PING frame (length 8, type 6, no flags) went out
    assert ticked(p.agent, 4.9) == [] and ticked(p.agent, 5.0) == [core.PingOverdue(3.0)]
    assert p.agent.stream_state(sid) is not core.StreamState.CLOSED


def test_a_probe_answered_keeps_the_connection_and_shortens_an_outstanding_ping():
    p = Pair(keepalive_interval=15.0, keepalive_timeout=10.0)
    p.agent.tick(15.0)  # the keepalive PING, due by 25.0
    ping = p.agent.data_to_send()
    p.agent.probe(20.0, 3.0)  # quiet since the preface: the outstanding PING is due by 23.0 now
    assert p.agent.next_deadline() == 23.0 and p.agent.data_to_send() == b""  # no second PING
    p.server.receive(ping, 21.0)
    p.agent.receive(p.server.data_to_send(), 21.5)  # the ACK
    p.agent.events()  # what the ACK brought
    assert ticked(p.agent, 23.0) == [] and p.agent.next_deadline() == 30.0  # alive: next keepalive only
    p.agent.probe(21.6, 3.0)  # heard 0.1 s ago: nothing to prove
    assert p.agent.data_to_send() == b"" and p.agent.next_deadline() == 30.0


@pytest.mark.processes
def test_the_core_imports_no_twisted_and_no_zope_and_patches_nothing():
    """Sans-IO for real: a fresh interpreter that imports the core has loaded no Twisted and
    no zope module, and hyperframe is exactly as it was (patches are installed at start)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    probe = (
        "import sys, hyperframe.frame as f; before = f._raw_data_repr; import tunnel.wire.connection; "
        "import json; print(json.dumps({'loaded': sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', "
        "'zope')), "
        "'patched': f._raw_data_repr is not before}))"
    )
    root = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
        env={"PYTHONPATH": root, "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found == {"loaded": [], "patched": False}


def test_a_stream_moves_only_as_the_table_says_and_an_impossible_step_raises():
    """Every (state, input) pair either is in the one table or raises; none is ignored."""
    import pytest

    from tunnel.wire.addresses import parse_authority

    for state in core.StreamState:
        for what in core.StreamInput:
            stream = core.Stream(1, parse_authority(b"example.test:443"), state=state)
            allowed = core.STREAM_TRANSITIONS.get((state, what))
            if allowed is None:
                with pytest.raises(core.StreamStateError, match=what.value):
                    stream.move(what)
                assert stream.state is state  # left as it was
            else:
                assert stream.move(what) is allowed
    assert all(
        to is core.StreamState.CLOSED
        for (_, what), to in core.STREAM_TRANSITIONS.items()
        if what is core.StreamInput.ENDED
    )
    assert not any(state is core.StreamState.CLOSED for state, _ in core.STREAM_TRANSITIONS)  # closed is the end
