"""The agent's own page at `/`: is the tunnel up, is the server running, what flows.

A person reads it at a glance: the tunnel's state and since when, the server's (from the
control plane when one is configured) with Wake and Stop buttons, open streams by
destination, a throughput graph over the last five minutes, recent errors, and how to point
a browser at the PAC file. Everything is rendered on the agent (an SVG graph, plain HTML
forms) and the page reloads itself every two seconds, so it works without JavaScript.
The buttons are forms that POST with a token only this page carries (`Agent.csrf`); the
front also refuses a POST whose Origin or Sec-Fetch-Site says another site sent it.
"""

from __future__ import annotations

import datetime
import html
from collections import deque

from twisted.internet.task import LoopingCall

from tunnel.redaction import redact

HISTORY = 300  # one sample a second: five minutes
REFRESH = 2  # seconds between reloads of the page


class TrafficMeter:
    """Bytes a second each way, sampled once a second from cumulative counters."""

    def __init__(self, reactor, totals) -> None:
        self.reactor, self.totals = reactor, totals  # totals() -> (received, sent)
        self.samples: deque = deque(maxlen=HISTORY)  # (down B/s, up B/s)
        self._last = None
        self._loop = LoopingCall(self.sample)
        self._loop.clock = reactor

    def start(self) -> None:
        self._last = self.totals()
        self._loop.start(1.0, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def sample(self) -> None:
        now = self.totals()
        last, self._last = self._last or now, now
        self.samples.append((max(0, now[0] - last[0]), max(0, now[1] - last[1])))

    def rates(self, seconds: int = 5) -> tuple[int, int]:
        """Each way, averaged over the last few seconds (flow control delivers in bursts)."""
        recent = list(self.samples)[-seconds:]
        if not recent:
            return (0, 0)
        return (sum(s[0] for s in recent) // len(recent), sum(s[1] for s in recent) // len(recent))


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def graph(samples: list[tuple[int, int]], width: int = 600, height: int = 120) -> str:
    """An SVG of both directions over the last HISTORY seconds, newest on the right."""
    top = max([max(s) for s in samples] + [1])
    step = width / (HISTORY - 1)
    start = HISTORY - len(samples)

    def line(index: int) -> str:
        return " ".join(
            f"{(start + i) * step:.1f},{height - value[index] / top * (height - 4):.1f}"
            for i, value in enumerate(samples)
        )

    return (
        f'<svg id="throughput" role="img" aria-label="throughput over the last five minutes" viewBox="0 0 {width} '
        f'{height}" width="{width}" height="{height}">'
        f'<rect width="{width}" height="{height}" fill="#f6f8fa" stroke="#d0d7de"/>'
        f'<polyline id="down" fill="none" stroke="#0969da" stroke-width="2" points="{line(0)}"/>'
        f'<polyline id="up" fill="none" stroke="#bf8700" stroke-width="2" points="{line(1)}"/>'
        f'<text x="6" y="14" font-size="11" fill="#57606a">peak {html.escape(human_bytes(top))}/s</text></svg>'
    )


def _shown(text: str) -> str:
    """Text on the page: escaped, and without a URL's password should a message quote one."""
    return html.escape(redact(str(text)))


def render(status: dict, token: str) -> bytes:
    """The page for this status (what `Agent.status()` returns)."""
    e = _shown
    up = status["connected"]
    tunnel = (
        f'<p class="state up">Connected to <b>{e(status["server"])}</b> for '
        f"{e(human_age(status['tunnel_uptime'] or 0))}</p>"
        if up
        else f'<p class="state down">Not connected{": " + e(status["last_error"]) if status["last_error"] else ""}</p>'
    )
    server = status.get("server_state")
    if server is None:
        server_html = f"<p>No control plane configured: the agent dials {e(status['server'])} as it is.</p>"
    else:
        buttons = "".join(
            f'<form method="post" action="/server/{action}"><input type="hidden" name="token" value="{e(token)}">'
            f'<button type="submit" name="action" value="{action}">{label}</button></form>'
            for action, label in (("wake", "Wake"), ("stop", "Stop"))
        )
        server_html = f'<p>Server: <b id="server-state">{e(server)}</b></p><div class="buttons">{buttons}</div>'
    notice = f'<p class="notice">{e(status["notice"])}</p>' if status.get("notice") else ""
    streams = status["streams_by_destination"]
    rows = (
        "".join(f"<tr><td>{e(dest)}</td><td>{n}</td></tr>" for dest, n in streams.items())
        or '<tr><td colspan="2">none open</td></tr>'
    )
    down, up_rate = status["rate"]
    received, sent = status["traffic"]
    errors = (
        "".join(
            f"<li><time>{datetime.datetime.fromtimestamp(at).strftime('%H:%M:%S')}</time> {e(message)}</li>"
            for at, message in reversed(status["recent_errors"])
        )
        or "<li>none</li>"
    )
    pac = f"http://{status['address']}/proxy.pac"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{REFRESH}">
<title>Fluidity agent: {"connected" if up else "not connected"}</title>
<style>
body {{ font: 15px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 660px; color: #1f2328; }}
h1 {{ font-size: 1.3em; }} h2 {{ font-size: 1.05em; margin-top: 1.4em; }}
.state {{ padding: .6em .8em; border-radius: 6px; }} .up {{ background: #dafbe1; }} .down {{ background: #ffebe9; }}
.buttons form {{ display: inline; margin-right: .5em; }} button {{ font-size: 1em; padding: .3em 1em; }}
table {{ border-collapse: collapse; }} td {{ padding: .15em 1em .15em 0; }}
code {{ background: #f6f8fa; padding: .1em .3em; }}
.notice {{ background: #fff8c5; padding: .4em .8em; }} .legend span {{ margin-right: 1em; }}
</style></head><body>
<h1>Fluidity agent <small>({e(status["identity"] or "no certificate name")})</small></h1>
{notice}<h2>Tunnel</h2>{tunnel}
<h2>Server</h2>{server_html}
<h2>Throughput</h2>
<p class="legend"><span style="color:#0969da">&#9632; down {e(human_bytes(down))}/s</span>
<span style="color:#bf8700">&#9632; up {e(human_bytes(up_rate))}/s</span>
<span>{e(human_bytes(received))} received, {e(human_bytes(sent))} sent</span></p>
{graph(status["history"])}
<h2>Open streams ({status["open_streams"]})</h2><table id="streams">{rows}</table>
<h2>Recent errors</h2><ul id="errors">{errors}</ul>
<h2>Using it</h2>
<p>HTTP and SOCKS5 proxy: <code>{e(status["address"])}</code>. In a browser, set the automatic proxy
configuration URL to <a href="/proxy.pac"><code>{e(pac)}</code></a>.
Machine-readable: <a href="/health">/health</a>.</p>
</body></html>
"""
    return page.encode()
