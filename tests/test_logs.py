"""Log helpers: the throttle that keeps repeated refusals from flooding the log."""


def test_throttle_lets_a_burst_through_then_counts_and_reports():
    from tunnel.wire.logs import Throttle, more

    now = [0.0]
    throttle = Throttle(burst=3, window=10.0, clock=lambda: now[0])
    assert [throttle("a") for _ in range(5)] == [0, 0, 0, None, None]
    assert throttle("b") == 0  # another kind of event has its own budget
    now[0] = 10.0
    assert throttle("a") == 2  # the next line says how many were not logged
    assert more(2) == " (2 more like it not logged)" and more(0) == ""
