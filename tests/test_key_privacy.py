"""Key files private the platform's way (issue 26, item 8): mode bits on POSIX, access
lists on Windows, and the certificate and demo paths with the POSIX-only calls absent."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys

import pytest

from tunnel.wire import key_privacy

# What `icacls C:\Users\alice\certs\client.key` prints on Windows 11.
ICACLS_SHARED = r"""C:\Users\alice\certs\client.key NT AUTHORITY\SYSTEM:(I)(F)
                                BUILTIN\Administrators:(I)(F)
                                DESKTOP-7\alice:(I)(F)
                                BUILTIN\Users:(I)(RX)

Successfully processed 1 files; Failed processing 0 files
"""
ICACLS_PRIVATE = r"""C:\Users\alice\certs\client.key DESKTOP-7\alice:(F)
                                NT AUTHORITY\SYSTEM:(F)
                                BUILTIN\Administrators:(F)

Successfully processed 1 files; Failed processing 0 files
"""


def test_windows_access_lists_are_judged_not_mode_bits(monkeypatch):
    monkeypatch.setenv("USERNAME", "alice")
    path = r"C:\Users\alice\certs\client.key"
    what, fix = key_privacy.exposure(path, windows=True, icacls_output=ICACLS_SHARED)
    assert "readable by BUILTIN\\Users" in what and fix == f'icacls "{path}" /inheritance:r /grant:r alice:F'
    assert key_privacy.exposure(path, windows=True, icacls_output=ICACLS_PRIVATE) is None
    assert key_privacy.readers(ICACLS_SHARED, "alice") == ["BUILTIN\\Users"]


def test_a_key_is_written_private_without_fchmod(tmp_path, monkeypatch):
    """os.fchmod is POSIX-only before Python 3.13: writing keys must not need it."""
    monkeypatch.delattr(os, "fchmod")
    path = tmp_path / "client.key"
    path.write_text("old, world-readable")
    path.chmod(0o644)
    key_privacy.write_private(path, b"secret")
    assert path.read_bytes() == b"secret" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key_privacy.exposure(str(path)) is None


@pytest.mark.processes
def test_fluidity_certs_init_without_the_posix_only_calls(tmp_path):
    """The real command, in an interpreter whose os has no fchmod and signal no SIGHUP."""
    code = (
        "import os, signal, sys; del os.fchmod; del signal.SIGHUP; "
        "from tunnel.ops import cli; sys.exit(cli.main(['certs', 'init', '--dir', sys.argv[1]]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "certs")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    for key in ("ca.key", "server.key", "client.key"):
        assert stat.S_IMODE((tmp_path / "certs" / key).stat().st_mode) == 0o600


@pytest.mark.processes
def test_a_world_readable_key_stops_the_agent_with_the_fix(certs, tmp_path):
    import shutil

    import yaml
    from support import TWISTD, agent_config

    key = tmp_path / "client.key"
    shutil.copy(certs.path("client.key"), key)
    key.chmod(0o644)
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(agent_config(certs, 1, key_file=str(key))))
    done = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "fluidity-agent", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        done.returncode != 0 and f"is readable by others (mode 644); run chmod 600 {key}" in done.stdout + done.stderr
    ), done


def test_the_local_demo_starts_its_children_without_posix_sessions(monkeypatch):
    """Windows has neither sessions nor preexec_fn: the demo's children get a process group."""
    from tunnel.ops import local_supervisor

    monkeypatch.setattr(local_supervisor, "POSIX", False)
    options = local_supervisor._child_options()
    assert "preexec_fn" not in options and "start_new_session" not in options and "creationflags" in options
    monkeypatch.setattr(local_supervisor, "POSIX", True)
    assert local_supervisor._child_options()["start_new_session"] is True


@pytest.mark.processes
def test_fluidity_local_runs_and_stops_without_sighup_or_fchmod(tmp_path, http_origin):
    from support import curl, free_port, wait_until

    server_port, proxy_port = free_port(), free_port()
    code = (
        "import os, signal, sys; del os.fchmod; del signal.SIGHUP; "
        "from tunnel.ops import cli; sys.exit(cli.main(['local', '--server-port', sys.argv[1], '--proxy-port', "
        "sys.argv[2]]))"
    )
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(server_port), str(proxy_port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(
            lambda: curl(
                "-x", f"http://127.0.0.1:{proxy_port}", f"http://127.0.0.1:{http_origin.port}/nohup", timeout=5
            ).stdout.startswith(b"hello from http-origin"),
            30,
            interval=0.3,
        )
    finally:
        process.send_signal(signal.SIGINT)
        out = process.communicate(timeout=40)[0].decode()
    assert process.returncode == 0 and "Traceback" not in out, out
