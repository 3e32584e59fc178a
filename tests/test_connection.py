"""The sans-IO tunnel core, bytes in and bytes out: no sockets, no reactor, no clock but
the numbers passed in. An agent-side and a server-side TunnelConnection talk by handing
each other `data_to_send()`."""

from __future__ import annotations

import dataclasses
import types

import h2.config
import h2.connection
import h2.errors
import pytest
from hpack import Encoder
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.wire import connection as core
from tunnel.wire.addresses import parse_authority

DEST = parse_authority("example.test:443")


class Pair:
    def __init__(self, keepalive_interval: float = 0.0, keepalive_timeout: float = 10.0, max_streams: int = 10) -> None:
        self.agent = core.TunnelConnection(
            client_side=True,
            limits=core.TunnelLimits(keepalive_interval=keepalive_interval, keepalive_timeout=keepalive_timeout),
        )
        self.server = core.TunnelConnection(client_side=False, limits=core.TunnelLimits(max_streams=max_streams))
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


def test_the_connection_moves_only_as_its_table_says_and_each_state_is_reached_as_it_happens():
    """The connection's own state is one value moved by one table (no flags beside it): every
    pair not in the table raises and leaves the state as it was; the states a real exchange
    passes through are the table's."""
    for state in core.ConnectionState:
        for what in core.ConnectionInput:
            conn = core.TunnelConnection(client_side=False)
            conn._state = state
            allowed = core.CONNECTION_TRANSITIONS.get((state, what))
            if allowed is None:
                with pytest.raises(core.ConnectionStateError, match="connection"):
                    conn._move(what)
                assert conn.state is state
            else:
                conn._move(what)
                assert conn.state is allowed
    ended = (core.ConnectionState.CLOSED, core.ConnectionState.FAILED)
    assert not any(state in ended for state, _ in core.CONNECTION_TRANSITIONS)  # both are ends

    p = Pair()  # an exchange: starting, open, the server drains, its last stream ends, closed
    assert p.agent.state is p.server.state is core.ConnectionState.OPEN
    assert p.agent.peer_ready and not p.agent.draining and not p.agent.terminated
    sid = p.agent.open_stream(DEST)
    p.pump()
    p.server.begin_drain()
    p.pump()
    assert p.agent.state is p.server.state is core.ConnectionState.DRAINING
    p.server.refuse(sid, 503, "draining")
    p.pump()
    assert p.server.state is p.agent.state is core.ConnectionState.CLOSED
    assert p.agent.peer_ready and p.agent.terminated  # it did work, once

    never = core.TunnelConnection(client_side=True)  # a peer that says goodbye before its SETTINGS
    never.start(0.0)
    assert never.state is core.ConnectionState.STARTING and not never.peer_ready
    never.receive(GoAwayFrame(0).serialize(), 1.0)
    assert never.state is core.ConnectionState.FAILED and never.terminated and not never.peer_ready


# -- frames about a stream this side closed, reset or forgot (RFC 9113 §5.1) ------------------
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class FrameWriter:
    """The other side of one core, written frame by frame (hyperframe and one HPACK encoder):
    a peer that sends what it likes, when it likes, and reads what the core answers."""

    def __init__(self, core_side: core.TunnelConnection, *, peer_is_server: bool) -> None:
        self.core = core_side
        self.encoder = Encoder()
        self.buffer = b""
        self.answers: list = []
        core_side.start(0.0)
        self.buffer = core_side.data_to_send()[len(PREFACE) if peer_is_server else 0 :]
        self.read()
        # The peer's SETTINGS, and its ACK of the core's: the core's own limits are now in force.
        self.feed(*([] if peer_is_server else [PREFACE]), SettingsFrame(0), SettingsFrame(0, flags=["ACK"]))

    def feed(self, *frames) -> None:
        self.core.receive(b"".join(f if isinstance(f, bytes) else f.serialize() for f in frames), 1.0)
        self.read()

    def read(self) -> list:
        self.buffer += self.core.data_to_send()
        got = []
        while len(self.buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
            if len(self.buffer) < 9 + length:
                break
            frame.parse_body(memoryview(self.buffer[9 : 9 + length]))
            self.buffer = self.buffer[9 + length :]
            got.append(frame)
        self.answers += got
        return got

    def headers(self, sid: int, fields: list[tuple[str, str]], end: bool = False) -> HeadersFrame:
        frame = HeadersFrame(sid, self.encoder.encode(fields))
        frame.flags.add("END_HEADERS")
        if end:
            frame.flags.add("END_STREAM")
        return frame


def _data(sid: int, body: bytes, end: bool = False) -> DataFrame:
    return DataFrame(sid, body, flags=["END_STREAM"] if end else [])


def _window(sid: int) -> WindowUpdateFrame:
    return WindowUpdateFrame(sid, window_increment=1000)


def _rst(sid: int) -> RstStreamFrame:
    return RstStreamFrame(sid, error_code=8)


def _server_script(draw, answered: bool) -> list[str]:
    """What a server may still send about one stream, in its order: its answer (unless it
    was already sent), bytes, then its end or its reset; window credit any time before a reset."""
    answer = "200" if answered else draw(st.sampled_from(["200", "403 and end", "reset", None]))
    script = [] if answered or answer is None else [answer]
    if answer == "200":
        script += ["data"] * draw(st.integers(0, 2)) + [draw(st.sampled_from(["data and end", "reset", None]))]
    return _with_window_updates(draw, [what for what in script if what])


def _agent_script(draw) -> list[str]:
    """What an agent may still send about one stream: bytes, then its end or its reset."""
    script = ["data"] * draw(st.integers(0, 2)) + [draw(st.sampled_from(["data and end", "reset", None]))]
    return _with_window_updates(draw, [what for what in script if what])


def _with_window_updates(draw, script: list[str]) -> list[str]:
    for _ in range(draw(st.integers(0, 2))):
        before = len(script) - 1 if script and script[-1] == "reset" else len(script)
        script.insert(draw(st.integers(0, max(before, 0))), "window update")
    return script


def _interleaved(draw, scripts: dict[int, list[str]]) -> list[tuple[int, str]]:
    """The streams' scripts merged in an order drawn at random, each stream's own order kept."""
    queues = {sid: list(script) for sid, script in scripts.items() if script}
    merged = []
    while queues:
        sid = draw(st.sampled_from(sorted(queues)))
        merged.append((sid, queues[sid].pop(0)))
        if not queues[sid]:
            del queues[sid]
    return merged


LATE = {
    "200": lambda w, sid: w.headers(sid, [(":status", "200")]),
    "403 and end": lambda w, sid: w.headers(sid, [(":status", "403")], end=True),
    "data": lambda w, sid: _data(sid, b"late bytes"),
    "data and end": lambda w, sid: _data(sid, b"the last bytes", end=True),
    "window update": lambda w, sid: _window(sid),
    "reset": lambda w, sid: _rst(sid),
}


def _agent_lets_go(w: FrameWriter, how: str) -> int:
    """Open a stream on the agent's core and end it `how`, before or after the answer."""
    sid = w.core.open_stream(DEST)
    if how == "reset before the answer":  # a browser cancels its request
        w.core.reset(sid, "the client went away")
    elif how == "reset after the answer":
        w.feed(w.headers(sid, [(":status", "200")]))
        w.core.reset(sid, "the client went away")
    elif how == "forgotten":
        w.core.close_stream(sid, "its client is gone")
    elif how == "ended, then cancelled":  # our END_STREAM out, the peer's direction stopped
        w.core.end(sid)
        w.core.cancel_if_ended(sid)
    w.core.events()
    assert w.core.stream_state(sid) is core.StreamState.CLOSED
    return sid


def _server_lets_go(w: FrameWriter, how: str) -> int:
    sid = getattr(w, "next_sid", 1)
    w.next_sid = sid + 2
    w.feed(w.headers(sid, CONNECT))
    [requested] = [e for e in w.core.events() if isinstance(e, core.StreamRequested)]
    if how == "refused by the egress policy":
        w.core.refuse(requested.sid, 403, "egress policy")
    elif how == "reset after the answer":
        w.core.respond(sid)
        w.core.reset(sid, "the destination reset")
    elif how == "forgotten":
        w.core.close_stream(sid, "its destination is gone")
    elif how == "ended, then cancelled":
        w.core.respond(sid)
        w.core.end(sid)
        w.core.cancel_if_ended(sid)
    w.core.events()
    assert w.core.stream_state(sid) is core.StreamState.CLOSED
    return sid


def _still_serves(w: FrameWriter, bystander: int) -> None:
    """The connection is whole, and the stream that was open all along still carries bytes."""
    events = w.core.events()
    assert not [e for e in events if isinstance(e, (core.Finished, core.StreamClosed))], events
    assert not w.core.terminated
    assert not [f for f in w.answers if isinstance(f, GoAwayFrame)], w.answers
    assert w.core.stream_state(bystander) is core.StreamState.OPEN
    w.core.send(bystander, b"still here")
    w.read()
    assert any(isinstance(f, DataFrame) and f.stream_id == bystander for f in w.answers)
    w.feed(_data(bystander, b"and so are we"))
    assert [e.data for e in w.core.events() if isinstance(e, core.DataReceived)] == [b"and so are we"]


AGENT_CLOSINGS = ["reset before the answer", "reset after the answer", "forgotten", "ended, then cancelled"]
SERVER_CLOSINGS = ["refused by the egress policy", "reset after the answer", "forgotten", "ended, then cancelled"]


@settings(max_examples=300, deadline=None)
@given(closings=st.lists(st.sampled_from(AGENT_CLOSINGS), min_size=1, max_size=4), data=st.data())
def test_the_server_s_late_frames_about_streams_the_agent_let_go_end_nothing(closings, data):
    """A browser cancels a request after the agent sent the CONNECT: the server's 200, bytes,
    end or reset may still be on the way, in any order across streams, and other streams open
    meanwhile (h2 then prunes the closed ones). Each is answered or dropped; the connection
    and the stream open all along are untouched (RFC 9113 §5.1; issue 39)."""
    w = FrameWriter(core.TunnelConnection(client_side=True), peer_is_server=True)
    bystander = w.core.open_stream(DEST)
    w.feed(w.headers(bystander, [(":status", "200")]))
    scripts = {}
    for how in closings:
        sid = _agent_lets_go(w, how)
        scripts[sid] = _server_script(data.draw, answered=how == "reset after the answer")
    for _ in range(data.draw(st.integers(0, 3), label="streams opened since")):  # h2 prunes closed ones
        _agent_lets_go(w, "reset after the answer")
    for sid, what in _interleaved(data.draw, scripts):
        w.feed(LATE[what](w, sid))
    _still_serves(w, bystander)
    later = w.core.open_stream(DEST)  # and a new stream opens and is answered
    w.feed(w.headers(later, [(":status", "200")]))
    assert [e.sid for e in w.core.events() if isinstance(e, core.StreamAnswered)] == [later]


@settings(max_examples=300, deadline=None)
@given(closings=st.lists(st.sampled_from(SERVER_CLOSINGS), min_size=1, max_size=4), data=st.data())
def test_the_agent_s_late_frames_about_streams_the_server_let_go_end_nothing(closings, data):
    """The same from the server's side: an agent's early bytes, end, window credit or reset
    that crossed the server's refusal or reset."""
    w = FrameWriter(core.TunnelConnection(client_side=False), peer_is_server=False)
    bystander = _server_opened(w)
    scripts = {_server_lets_go(w, how): _agent_script(data.draw) for how in closings}
    for _ in range(data.draw(st.integers(0, 3), label="streams opened since")):
        _server_lets_go(w, "reset after the answer")
    for sid, what in _interleaved(data.draw, scripts):
        w.feed(LATE[what](w, sid))
    _still_serves(w, bystander)


def _server_opened(w: FrameWriter) -> int:
    sid = getattr(w, "next_sid", 1)
    w.next_sid = sid + 2
    w.feed(w.headers(sid, CONNECT))
    w.core.events()
    w.core.respond(sid)
    w.core.events()
    return sid


def test_late_data_on_a_closed_stream_gives_its_connection_window_back():
    """Bytes the peer sent on a stream this side reset still count against the connection's
    window; they are credited back, or the streams open beside it would starve."""
    w = FrameWriter(core.TunnelConnection(client_side=True), peer_is_server=True)
    bystander = w.core.open_stream(DEST)
    w.feed(w.headers(bystander, [(":status", "200")]))
    gone = _agent_lets_go(w, "reset after the answer")
    chunk = b"x" * core.MAX_FRAME
    sent = 0
    while sent < core.CONNECTION_WINDOW - 65535 - core.STREAM_WINDOW:  # all of it but one stream window
        w.feed(_data(gone, chunk))
        sent += len(chunk)
    credit = sum(f.window_increment for f in w.answers if isinstance(f, WindowUpdateFrame) and f.stream_id == 0)
    assert credit >= sent - core.CONNECTION_WINDOW // 2  # h2 gives it back once half the window is used
    for _ in range(core.STREAM_WINDOW // len(chunk)):  # a whole stream window for the bystander still fits
        w.feed(_data(bystander, chunk))
    assert not w.core.terminated
    assert sum(len(e.data) for e in w.core.events() if isinstance(e, core.DataReceived)) == core.STREAM_WINDOW


def test_a_stream_the_server_tries_to_open_is_refused_alone():
    """Push is off and a CONNECT tunnel has nothing for a server to open: its HEADERS on a new
    stream id is answered with RST_STREAM on that stream, and the connection carries on."""
    w = FrameWriter(core.TunnelConnection(client_side=True), peer_is_server=True)
    bystander = w.core.open_stream(DEST)
    w.feed(w.headers(bystander, [(":status", "200")]))
    w.feed(w.headers(2, CONNECT))
    [refused] = [f for f in w.answers if isinstance(f, RstStreamFrame)]
    assert refused.stream_id == 2 and refused.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    _still_serves(w, bystander)


def test_clients_cancelling_faster_than_the_server_allows_wait_instead_of_losing_the_tunnel():
    """Every stream a client cancels before its answer is a reset the server counts against
    Rapid Reset. The agent keeps under that budget: past 90% of it in one window, new streams
    are refused locally with a 503 that says why, the connection and its open streams carry
    on, and once the window has passed streams open again."""
    p = Pair(max_streams=core.DEFAULT_LIMITS.max_streams)
    bystander = p.agent.open_stream(DEST)
    p.pump(now=0.0)
    p.server.respond(bystander)
    cancelled = refused = 0
    for n in range(core.FLOOD_LIMITS["stream resets"] + 200):
        now = 1.0 + n * 0.001  # all within one flood window
        p.agent.tick(now)
        try:
            sid = p.agent.open_stream(DEST)
        except core.OpenFailed as e:
            assert e.status == 503 and "cancelled before their answer" in e.reason
            refused += 1
            continue
        p.pump(now=now)
        p.agent.reset(sid, "the client went away")
        cancelled += 1
        p.pump(now=now)
    allowed = core.FLOOD_LIMITS["stream resets"] * 9 // 10
    assert cancelled == allowed and refused == core.FLOOD_LIMITS["stream resets"] + 200 - allowed
    assert not p.of("server", core.Finished) and not p.of("agent", core.Finished)
    assert p.agent.stream_state(bystander) is core.StreamState.OPEN
    p.agent.tick(1.0 + core.FLOOD_WINDOW)
    assert p.agent.open_stream(DEST)  # the window has passed


def test_a_server_resetting_the_agent_s_streams_is_no_flood_to_the_agent():
    """A port scan whose destinations all refuse: the server refuses and resets each stream
    the agent opened. That is the agent's own doing, not an attack on it: no flood budget."""
    p = Pair(max_streams=core.DEFAULT_LIMITS.max_streams)
    for _n in range(core.FLOOD_LIMITS["stream resets"] + 100):
        sid = p.agent.open_stream(DEST)
        p.pump(now=1.0)
        p.server.refuse(sid, 502, "connection refused")
        p.pump(now=1.0)
    assert len(p.of("agent", core.StreamRefused)) == core.FLOOD_LIMITS["stream resets"] + 100
    assert not p.of("agent", core.Finished) and not p.agent.terminated


def test_resets_of_answered_streams_are_no_rapid_reset():
    """A download the user cancels is reset after its 200: work the server was asked for and
    did. Only resets before the answer count against the server's Rapid Reset budget."""
    p = Pair(max_streams=core.DEFAULT_LIMITS.max_streams)
    for _ in range(core.FLOOD_LIMITS["stream resets"] + 100):
        sid = p.agent.open_stream(DEST)
        p.pump(now=1.0)
        p.server.respond(sid)
        p.pump(now=1.0)
        p.agent.reset(sid, "the user cancelled the download")
        p.pump(now=1.0)
    assert not p.of("server", core.Finished) and not p.server.terminated


@pytest.mark.parametrize("client_side", [False, True], ids=["server", "agent"])
def test_every_limit_a_role_has_comes_from_its_settings_and_reaches_the_core(client_side, tmp_path):
    """Each limit is set in a config file to a value no default has, loaded as the role loads
    it, and then seen in what the core does; a settings class that lost one fails at start."""
    from tunnel.config import AGENT_KEYS, SERVER_KEYS, load

    chosen = {"max_streams": 37, "keepalive_interval": 41.0, "keepalive_timeout": 43.0, "probe_timeout": 4.5}
    skipped = core.SERVER_ONLY_LIMITS if client_side else core.AGENT_ONLY_LIMITS
    role = {n: v for n, v in chosen.items() if n not in skipped}
    assert set(role) | skipped == {f.name for f in dataclasses.fields(core.TunnelLimits)}  # none forgotten
    path = tmp_path / "role.yaml"
    path.write_text("".join(f"{name}: {value}\n" for name, value in role.items()))
    settings = load(AGENT_KEYS if client_side else SERVER_KEYS, str(path))
    limits = core.TunnelLimits.of(settings, client_side=client_side)
    assert {n: getattr(limits, n) for n in role} == role

    conn = core.TunnelConnection(client_side=client_side, limits=limits)
    conn.start(100.0)
    assert conn.next_deadline() == 100.0 + role["keepalive_interval"]
    conn.tick(100.0 + role["keepalive_interval"])
    conn.tick(100.0 + role["keepalive_interval"] + role["keepalive_timeout"])
    [overdue] = [e for e in conn.events() if isinstance(e, core.PingOverdue)]
    assert overdue.waited == role["keepalive_timeout"]
    [settings_frame] = [f for f in _frames(conn.data_to_send(), client_side) if isinstance(f, SettingsFrame)]
    advertised = settings_frame.settings.get(SettingsFrame.MAX_CONCURRENT_STREAMS)
    if client_side:
        assert advertised is None  # the agent limits nothing (see the late-frames tests)
        fresh = core.TunnelConnection(client_side=True, limits=limits)
        fresh.start(0.0)
        fresh.probe(5.0, limits.probe_timeout)  # quiet for 5 s: a PING goes with the stream
        assert fresh.next_deadline() == 5.0 + role["probe_timeout"]
    else:
        assert advertised == role["max_streams"]

    for name in role:  # a settings class in which one limit was renamed
        renamed = types.SimpleNamespace(**{(n + "_renamed" if n == name else n): v for n, v in role.items()})
        with pytest.raises(TypeError, match=name):
            core.TunnelLimits.of(renamed, client_side=client_side)


def _frames(data: bytes, client_side: bool) -> list:
    data = data[len(PREFACE) :] if client_side else data
    frames = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        frames.append(frame)
        data = data[9 + length :]
    return frames
