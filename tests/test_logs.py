"""Log helpers: the throttle that keeps repeated refusals from flooding the log."""

import pytest


def test_throttle_lets_a_burst_through_then_counts_and_reports():
    from tunnel.wire.logs import Throttle, more

    now = [0.0]
    throttle = Throttle(burst=3, window=10.0, clock=lambda: now[0])
    assert [throttle("a") for _ in range(5)] == [0, 0, 0, None, None]
    assert throttle("b") == 0  # another kind of event has its own budget
    now[0] = 10.0
    assert throttle("a") == 2  # the next line says how many were not logged
    assert more(2) == " (2 more like it not logged)" and more(0) == ""


def test_one_call_logs_a_throttled_line_with_the_count_held_back():
    from twisted.logger import Logger, LogLevel

    from tunnel.wire.logs import Throttle

    now, seen = [0.0], []
    throttle = Throttle(burst=2, window=10.0, clock=lambda: now[0])
    log = Logger(namespace="test", observer=seen.append)
    for _ in range(5):
        throttle.log(log.warn, "egress", "egress refused {host}", host="10.0.0.1")
    now[0] = 10.0
    throttle.log(log.warn, "egress", "egress refused {host}", host="10.0.0.1")
    from twisted.logger import formatEvent

    assert [formatEvent(e) for e in seen] == ["egress refused 10.0.0.1"] * 2 + [
        "egress refused 10.0.0.1 (3 more like it not logged)"
    ]
    assert {e["log_level"] for e in seen} == {LogLevel.warn}


@pytest.mark.processes
def test_a_peers_control_characters_cannot_forge_or_rewrite_a_text_log_line(certs, tmp_path):
    """Issue 24, item 7: an HTTP/2 refusal quotes the peer's header value; through the real
    server's text log, CR, ESC, C1 and U+2028 come out as visible escapes."""
    import re
    import time

    from h2_raw import HeadersFrame, RawH2
    from support import server_config, start_twistd

    server = start_twistd("server", server_config(certs, log_level="info"), tmp_path)
    try:
        for headers in (
            [
                (":method", "CONNECT"),
                (":authority", "a:1"),
                ("x-evil", "v\r2026-01-01T00:00:00+0000 [forged#info] all fine"),
            ],
            [(":method", "CONNECT\x1b[2J\x9b"), (":authority", "a:1")],
            [(":method", "CONNECT"), (":authority", "a:1\u2028forged"), ("x", "\x00\x7f")],
        ):
            peer = RawH2(server.port, certs)
            frame = HeadersFrame(1, peer.encoder.encode(headers))
            frame.flags.add("END_HEADERS")
            peer.send_frames([frame])
            peer.outcome()
            peer.close()
        time.sleep(0.5)
    finally:
        server.stop()
    text = server.log_path.read_bytes().decode("utf-8")
    assert "protocol error" in text
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]", text), [
        line for line in text.splitlines() if re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", line)
    ]
    assert "[forged#info]" not in "".join(line[:60] for line in text.splitlines())  # no line starts forged


def test_escape_keeps_text_and_shows_controls():
    from tunnel.wire.logs import escape

    assert (
        escape("plain ünïcode, tabs\tand\nnewlines\r\x1b\x9b\u2028")
        == "plain ünïcode, tabs\\tand\\nnewlines\\r\\x1b\\x9b\\u2028"
    )
