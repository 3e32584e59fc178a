"""A real headless Chromium (Debian's package), driven over its DevTools protocol.

`Browser` starts chromium with a profile of its own and no proxy, and talks CDP to one
page over a WebSocket: navigate and wait for the load, evaluate JavaScript in the page
(to read the DOM or click a button as a person would), and take a PNG screenshot.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from support import free_port, wait_until


class Browser:
    def __init__(self, width: int = 760, height: int = 1000) -> None:
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        assert binary, "chromium is needed (apt-get install chromium; scripts/install-test-tools installs it)"
        from websockets.sync.client import connect

        self.profile = Path(tempfile.mkdtemp(prefix="fluidity-chromium-"))
        port = free_port()
        self.process = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",
                "--no-proxy-server",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                f"--window-size={width},{height}",
                f"--remote-debugging-port={port}",
                f"--user-data-dir={self.profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def page_target():
            try:
                targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2))
            except OSError:
                return None
            return next((t for t in targets if t.get("type") == "page"), None)

        target = wait_until(page_target, 30, interval=0.2)
        self._connection = connect(target["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024, open_timeout=10)
        self.ws = self._connection.__enter__()
        self._id = 0
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, timeout: float = 30.0, session: str | None = None, **params) -> dict:
        """One CDP command; `session` sends it to an attached target (a frame of another site)."""
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
        raise TimeoutError(method)

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        wait_until(
            lambda: self.evaluate("document.readyState") == "complete" and self.evaluate("location.href") == url,
            20,
            interval=0.1,
        )

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"].get("text", "exception"))
        return result["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        try:
            self._connection.__exit__(None, None, None)
        finally:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            shutil.rmtree(self.profile, ignore_errors=True)
