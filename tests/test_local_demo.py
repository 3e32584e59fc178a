"""The README's first command: `fluidity local` runs server and agent, Ctrl-C stops both."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

from support import FLUIDITY, curl, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


def test_local_demo_serves_and_stops_on_ctrl_c(tmp_path, http_origin):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    server_port, proxy_port = free_port(), free_port()
    process = subprocess.Popen(
        [FLUIDITY, "local", "--server-port", str(server_port), "--proxy-port", str(proxy_port)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        assert (tmp_path / "certs" / "ca.pem").exists() or wait_until(lambda: (tmp_path / "certs" / "ca.pem").exists(), 10)

        def proxied():
            r = curl("-x", f"http://127.0.0.1:{proxy_port}", f"http://127.0.0.1:{http_origin.port}/demo", timeout=5)
            return r.stdout.startswith(b"hello from http-origin /demo")

        wait_until(proxied, 20, interval=0.3)
    finally:
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        out = process.communicate(timeout=40)[0].decode()
    assert process.returncode == 0, out
    assert time.monotonic() - started < 10
    assert f"curl -x http://127.0.0.1:{proxy_port} https://example.com" in out
    assert "Traceback" not in out
