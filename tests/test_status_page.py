"""The agent's status page at `/` and `fluidity agent status` (issue 26, item 4), looked at
in a real headless Chromium: screenshots, the graph moving while a download runs, the Wake
and Stop buttons driving the control plane (moto's ECS behind `fluidity control-plane`),
and a page of another site trying to press them."""

from __future__ import annotations

import http.server
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from aws import ControlPlaneProc, EcsScheduler
from browser import Browser
from support import FLUIDITY, agent_config, curl, server_config, start_twistd, wait_connected, wait_until

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)

SHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots"  # kept for a person to look at
API_KEY = "status-page-key"


@pytest.fixture
def browser():
    b = Browser()
    yield b
    b.close()


def read(browser: Browser, expression: str):
    """The page reloads itself every 2 s: read it between two reloads."""

    def attempt():
        try:
            return browser.evaluate(f"(() => {{ try {{ return {expression}; }} catch (e) {{ return null; }} }})()")
        except RuntimeError:
            return None

    return wait_until(lambda: attempt() is not None and attempt(), 10, interval=0.2)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


def shot(browser: Browser, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = browser.screenshot(SHOTS / name)
    width, height = png_size(path)
    assert (width, height) == (760, 1000) and path.stat().st_size > 15_000, (
        path,
        width,
        height,
    )  # a rendered page, not a blank one
    return path


def test_the_page_at_a_glance_and_its_graph_moving_during_a_download(tunnel, http_origin, browser):
    url = f"http://127.0.0.1:{tunnel.agent.port}/"
    browser.open(url)
    assert "Connected to" in read(browser, "document.querySelector('.state').textContent")
    assert read(browser, "document.title") == "Fluidity agent: connected"
    assert f"http://127.0.0.1:{tunnel.agent.port}/proxy.pac" in read(browser, "document.body.innerText")
    shot(browser, "status-idle.png")

    download = subprocess.Popen(
        [
            "curl",
            "-s",
            "--limit-rate",
            "2M",
            "-x",
            f"http://127.0.0.1:{tunnel.agent.port}",
            f"http://127.0.0.1:{http_origin.port}/bytes/40000000",
            "-o",
            "/dev/null",
        ]
    )
    try:
        time.sleep(4)
        first = read(browser, "document.getElementById('down').getAttribute('points')")
        assert f"127.0.0.1:{http_origin.port}" in read(browser, "document.getElementById('streams').innerText")
        time.sleep(3)  # the page has reloaded at least once since
        second = read(browser, "document.getElementById('down').getAttribute('points')")
        assert first != second, "the graph did not move"
        heights = [float(p.split(",")[1]) for p in second.split()]
        assert min(heights) < 100, second  # some second of the download stands well above the floor (120)
        assert "MB received" in read(browser, "document.querySelector('.legend').innerText")
        shot(browser, "status-downloading.png")
    finally:
        download.kill()
        download.wait(10)


def test_fluidity_agent_status_says_it_in_lines(tunnel):
    done = subprocess.run(
        [FLUIDITY, "agent", "status", "--port", str(tunnel.agent.port)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done
    assert (
        done.stdout.startswith("tunnel:  up for ")
        and "server:  no control plane configured" in done.stdout
        and "error:   none" in done.stdout
    ), done.stdout
    nobody = subprocess.run([FLUIDITY, "agent", "status", "--port", "1"], capture_output=True, text=True, timeout=30)
    assert (
        nobody.returncode == 1
        and "no agent answers on 127.0.0.1:1" in nobody.stderr
        and "Traceback" not in nobody.stderr
    ), nobody


@pytest.fixture
def world(aws, certs, tmp_path):
    """A server the control plane starts and stops (moto's ECS; a scheduler playing ECS), and
    an agent that knows only the control plane: it wakes the server as it starts."""
    config = server_config(certs)
    server = start_twistd("server", config, tmp_path)
    service = aws.make_service(desired=0, port=server.port)
    plane = ControlPlaneProc(aws, tmp_path, API_KEY, {"CONTAINER_PORT": str(server.port)})
    scheduler = EcsScheduler(aws, service)
    lifecycle = {
        "wake_endpoint": f"{plane.url}/wake",
        "kill_endpoint": f"{plane.url}/kill",
        "api_key": API_KEY,
        "wake_retry_interval": "0.3s",
        "kill_on_exit": False,
    }
    agent = start_twistd("agent", agent_config(certs, 1, server_ip="", lifecycle=lifecycle), tmp_path)
    wait_connected(agent, 30)
    state = {"server": server}
    yield aws, service, agent, plane, state, config
    agent.stop()
    scheduler.stop()
    plane.stop()
    state["server"].stop()


def page_says(browser: Browser, text: str, seconds: float = 30) -> None:
    seen = []
    try:
        wait_until(
            lambda: (seen.append(read(browser, "document.body.innerText")), text in (seen[-1] or ""))[1],
            seconds,
            interval=0.5,
        )
    except TimeoutError:
        raise AssertionError(f"the page never said {text!r}: {seen[-1]!r}") from None


def press(browser: Browser, action: str) -> None:
    """Click a button between two of the page's reloads (mid-reload there is no button)."""
    button = f"document.querySelector('button[value={action}]')"
    script = f"(() => {{ const b = {button}; if (b) b.click(); return !!b; }})()"

    def clicked() -> bool:
        try:
            return browser.evaluate(script) is True
        except RuntimeError:  # the page was being replaced
            return False

    wait_until(clicked, 10, interval=0.2)


def test_stop_and_wake_buttons_drive_the_control_plane(world, browser, tmp_path):
    aws, service, agent, plane, state, config = world
    browser.open(f"http://127.0.0.1:{agent.port}/")
    page_says(browser, "Server: running")
    shot(browser, "status-running.png")
    press(browser, "stop")
    wait_until(lambda: aws.desired_count(service) == 0, 20, interval=0.3)
    # The plane logs its answer once it is written: a moment after moto has the new count.
    wait_until(lambda: "POST /kill from 127.0.0.1 -> 200" in plane.log(), 10, interval=0.2)
    state["server"].stop()  # ECS stops the task
    page_says(browser, "Not connected")
    page_says(browser, "Server: stopped")
    shot(browser, "status-stopped.png")
    state["server"] = start_twistd("server", config, tmp_path, name="server-again")  # the task ECS will start
    press(browser, "wake")
    wait_until(lambda: aws.desired_count(service) == 1, 20, interval=0.3)
    page_says(browser, "Connected to")
    agent.assert_no_unhandled_errors()


def test_a_page_of_another_site_cannot_press_the_buttons(world, browser, tmp_path):
    """CSRF, tried in the browser: a page on another origin auto-submits the Stop form (the
    token guessed), and fetch()es it without one; the agent refuses both and the server
    stays up. The same POST with the page's own token is refused from another Origin too."""
    aws, service, agent, plane, _state, _config = world
    assert aws.desired_count(service) == 1
    browser.open(f"http://127.0.0.1:{agent.port}/")
    token = read(browser, "document.querySelector('input[name=token]').value")

    target = f"http://127.0.0.1:{agent.port}/server/stop"
    page = f"""<!doctype html><form id="f" method="post" action="{target}"><input name="token" value="guessed"></form>
<script>fetch("{target}", {{method: "POST", mode: "no-cors", body: "token=guessed"}});
document.getElementById("f").submit();</script>"""
    (tmp_path / "evil.html").write_text(page)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path), **kw)

        def log_message(self, *a):
            pass

    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        browser.call("Page.navigate", url=f"http://localhost:{evil.server_address[1]}/evil.html")
        time.sleep(3)
        assert aws.desired_count(service) == 1 and "POST /kill from" not in plane.log()
        assert "refused" in (browser.evaluate("document.body.innerText") or "")  # what the form landed on
        for headers in (
            ["-H", f"Origin: http://localhost:{evil.server_address[1]}"],
            ["-H", "Sec-Fetch-Site: cross-site"],
        ):
            forged = curl("-s", "-o", "/dev/null", "-w", "%{http_code}", *headers, "--data", f"token={token}", target)
            assert forged.stdout == b"403", forged
        assert aws.desired_count(service) == 1 and "POST /kill from" not in plane.log()
        own = curl(
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            f"Origin: http://127.0.0.1:{agent.port}",
            "--data",
            f"token={token}",
            target,
        )
        assert own.stdout == b"303", own  # the page's own form, as the browser sends it
        wait_until(lambda: aws.desired_count(service) == 0, 20, interval=0.3)
    finally:
        evil.shutdown()


def test_a_page_of_another_site_cannot_frame_the_page_and_take_a_click(world, browser, tmp_path):
    """Clickjacking, tried in the browser (issue 39, item 4): a page on another origin lays
    the status page in a transparent frame over its own bait and the user clicks where Stop
    is. The frame must not render the page, and the click must reach no control plane."""
    aws, service, agent, plane, _state, _config = world
    status_page = f"http://127.0.0.1:{agent.port}/"
    browser.open(status_page)
    page_says(browser, "Server: running")
    stop = read(
        browser,
        "(() => { const r = document.querySelector('button[value=stop]').getBoundingClientRect();"
        " return [r.x + r.width / 2, r.y + r.height / 2]; })()",
    )
    (tmp_path / "bait.html").write_text(
        "<!doctype html><style>body { margin: 0; } iframe { position: absolute; top: 0; left: 0; border: 0;"
        " width: 760px; height: 1000px; opacity: 0.01; }</style><p>Win a prize: click anywhere!</p>"
        f'<iframe src="{status_page}"></iframe>'
    )

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path), **kw)

        def log_message(self, *a):
            pass

    bait = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=bait.serve_forever, daemon=True).start()
    try:
        browser.open(f"http://localhost:{bait.server_address[1]}/bait.html")
        time.sleep(1)  # the frame's own load

        def frames() -> list[dict]:  # the frame is another site's: a target of its own
            return [t for t in browser.call("Target.getTargets")["targetInfos"] if t["type"] == "iframe"]

        framed = frames()
        assert [f["url"] for f in framed] == [status_page], framed  # the bait did frame it...
        session = browser.call("Target.attachToTarget", targetId=framed[0]["targetId"], flatten=True)["sessionId"]
        inside = browser.call(
            "Runtime.evaluate", session=session, expression="[location.href, document.title]", returnByValue=True
        )["result"]["value"]  # what the frame shows: the page, or the browser's refusal
        deadline = time.monotonic() + 5  # a few clicks: the page reloads itself every 2 s
        while time.monotonic() < deadline and "POST /kill from" not in plane.log():
            for kind in ("mousePressed", "mouseReleased"):
                browser.call("Input.dispatchMouseEvent", type=kind, x=stop[0], y=stop[1], button="left", clickCount=1)
            time.sleep(0.5)
        time.sleep(1)
        killed = "POST /kill from" in plane.log() or aws.desired_count(service) != 1  # the click pressed Stop
        assert inside[0] != status_page and "Fluidity" not in inside[1] and not killed, (inside, plane.log()[-2000:])
    finally:
        bait.shutdown()
