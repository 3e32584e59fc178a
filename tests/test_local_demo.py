"""The README's first command: `fluidity local` runs server and agent, Ctrl-C stops both."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support import FLUIDITY, curl, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.processes
def test_local_demo_serves_and_stops_on_ctrl_c(tmp_path, http_origin):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    server_port, proxy_port = free_port(), free_port()
    process = subprocess.Popen(
        [FLUIDITY, "local", "--server-port", str(server_port), "--proxy-port", str(proxy_port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert (tmp_path / "certs" / "ca.pem").exists() or wait_until(
            lambda: (tmp_path / "certs" / "ca.pem").exists(), 10
        )

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


def _start(tmp_path, server_port: int, proxy_port: int) -> subprocess.Popen:
    if not (tmp_path / "configs").exists():
        shutil.copytree(ROOT / "configs", tmp_path / "configs")
    return subprocess.Popen(
        [FLUIDITY, "local", "--server-port", str(server_port), "--proxy-port", str(proxy_port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@pytest.mark.processes
@pytest.mark.parametrize("how", ["SIGHUP", "SIGKILL"])
def test_closing_the_terminal_or_killing_it_stops_both(tmp_path, how):
    server_port, proxy_port = free_port(), free_port()
    process = _start(tmp_path, server_port, proxy_port)
    try:
        wait_until(lambda: _listening(server_port) and _listening(proxy_port), 30, interval=0.3)
    finally:
        process.send_signal(getattr(signal, how))
        process.communicate(timeout=40)
    # Neither the server nor the agent is left holding its port (before: "Address already in use" next time).
    wait_until(lambda: not _listening(server_port) and not _listening(proxy_port), 30, interval=0.3)


@pytest.mark.processes
def test_a_port_in_use_is_reported_before_anything_claims_to_run(tmp_path):
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    busy = holder.getsockname()[1]
    try:
        process = _start(tmp_path, busy, free_port())
        out = process.communicate(timeout=60)[0].decode()
    finally:
        holder.close()
    assert process.returncode == 1
    assert f"port {busy} on 127.0.0.1 (server) is already in use" in out
    assert "Fluidity is running" not in out


@pytest.mark.processes
def test_help_describes_every_option_of_local():
    done = subprocess.run([FLUIDITY, "local", "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for option, words in (
        ("--certs", "development CA"),
        ("--configs", "server.local.yaml"),
        ("--server-port", "TLS port"),
        ("--proxy-port", "proxy port"),
    ):
        assert option in text and words in text, (option, text)


@pytest.mark.processes
def test_it_restarts_at_once_on_the_same_ports(tmp_path, http_origin):
    """Issue 26, item 2: connections left in TIME_WAIT by the last run are not 'in use'."""
    server_port, proxy_port = free_port(), free_port()
    for run in range(2):
        process = _start(tmp_path, server_port, proxy_port)
        try:

            def proxied():
                r = curl(
                    "-x", f"http://127.0.0.1:{proxy_port}", f"http://127.0.0.1:{http_origin.port}/again", timeout=5
                )
                return r.stdout.startswith(b"hello from http-origin /again")

            wait_until(proxied, 20, interval=0.3)
            for _ in range(5):  # the agent closes these itself: TIME_WAIT on its own port
                curl(f"http://127.0.0.1:{proxy_port}/health", timeout=5)
        finally:
            process.send_signal(signal.SIGINT)
            out = process.communicate(timeout=40)[0].decode()
        assert process.returncode == 0, (run, out)
        assert "already in use" not in out


def test_the_built_in_demo_configs_are_the_checkouts(tmp_path):
    """An installed `fluidity local` has no configs/ folder: its built-in settings are the
    checkout's `*.local.yaml` (certificates apart: they are passed by flag)."""
    import yaml

    from tunnel.ops import local_demo

    for role, built_in in (("server", local_demo.SERVER), ("agent", local_demo.AGENT)):
        checkout = yaml.safe_load((ROOT / "configs" / f"{role}.local.yaml").read_text())
        for key in ("cert_file", "key_file", "ca_file"):
            checkout.pop(key, None)
        assert checkout == built_in, role


@pytest.mark.processes
def test_outside_a_checkout_it_runs_with_its_own_settings(tmp_path, http_origin):
    """No configs/ where it runs: the built-in settings, certificates in the user's data folder."""
    server_port, proxy_port = free_port(), free_port()
    env = {**__import__("os").environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    work = tmp_path / "elsewhere"
    work.mkdir()
    process = subprocess.Popen(
        [FLUIDITY, "local", "--server-port", str(server_port), "--proxy-port", str(proxy_port)],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:

        def proxied():
            r = curl("-x", f"http://[::1]:{proxy_port}", f"http://127.0.0.1:{http_origin.port}/elsewhere", timeout=5)
            return r.stdout.startswith(b"hello from http-origin /elsewhere")

        assert wait_until(proxied, 30, interval=0.3)
    finally:
        process.send_signal(signal.SIGINT)
        out = process.communicate(timeout=40)[0].decode()
    assert process.returncode == 0, out
    assert (tmp_path / "data" / "fluidity" / "local-certs" / "ca.pem").exists(), out
    assert not (work / "certs").exists() and "Traceback" not in out, out
