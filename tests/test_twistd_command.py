"""How `fluidity` starts twistd on each platform (tunnel.ops.twistd_command): found where pip put
it, with the flags that platform's twistd takes, and on Windows run in the process itself, so its
Ctrl-C and exit code are fluidity's. Under Wine, scripts/windows-check runs the Windows side for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import agent_config, free_port, wait_until

from tunnel.ops.twistd_command import foreground_flags, stop_signal, twistd_command

pytestmark = pytest.mark.processes

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def test_windows_twistd_gets_no_pidfile_flag_and_posix_twistd_does():
    """Issue 40: Windows' twistd refuses `--pidfile` (`option --pidfile not recognized`)."""
    assert foreground_flags("agent", "win32") == ["-n", "fluidity-agent"]
    assert foreground_flags("server", "linux") == ["-n", "--pidfile=", "fluidity-server"]
    assert twistd_command("win32") == [sys.executable, "-m", "tunnel.ops.twistd_windows"]
    assert stop_signal("win32") == 1 and stop_signal("linux") == signal.SIGTERM  # CTRL_BREAK_EVENT


def _bare_venv(tmp_path: Path) -> Path:
    """A virtualenv with no scripts of its own that imports this checkout and its dependencies:
    an interpreter beside which there is no twistd."""
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    site = next((venv / "lib").glob("python3*/site-packages"))
    ours = next((VENV_BIN.parent / "lib").glob("python3*/site-packages"))
    (site / "fluidity-test.pth").write_text(f"{REPO}\n{ours}\n")
    return venv / "bin" / "python"


def test_a_user_install_finds_twistd_in_the_user_scripts_dir(tmp_path):
    """Issue 40: `pip install --user` puts twistd in the user scheme's scripts dir (~/.local/bin),
    often not on PATH and not beside the interpreter; `fluidity agent --help` runs it from there."""
    python = _bare_venv(tmp_path)
    user_base = tmp_path / "userbase"
    (user_base / "bin").mkdir(parents=True)
    twistd = user_base / "bin" / "twistd"
    twistd.write_text(f"#!{python}\nfrom twisted.scripts.twistd import run\nrun()\n")
    twistd.chmod(0o755)
    env = {**os.environ, "PYTHONUSERBASE": str(user_base), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [str(python), "-m", "tunnel.ops.cli", "agent", "--help"], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "--proxy-port" in done.stdout and "--server-ip" in done.stdout, done.stdout


def _windows_way(args: list[str], log: Path) -> subprocess.Popen:
    """`fluidity agent ARGS` as it runs on Windows (run_in_foreground for win32: twistd in this
    process, through tunnel.ops.twistd_windows), writing to `log`."""
    code = (
        "import sys; from tunnel.ops.twistd_command import run_in_foreground; "
        "sys.exit(run_in_foreground(sys.argv[1:], 'win32'))"
    )
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stdout=out, stderr=out)


def test_the_windows_way_stops_on_ctrl_c_with_exit_code_0_and_fails_with_twistds_code(certs, tmp_path):
    """Issue 40: `fluidity agent` on Windows is the agent's own process: Ctrl-C (SIGINT) stops it
    cleanly and its exit code is 0; a usage error is twistd's exit code and message."""
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(agent_config(certs, free_port(), proxy_port=free_port())))
    log = tmp_path / "agent.log"
    agent = _windows_way([*foreground_flags("agent", "win32"), "--config", str(config)], log)
    try:
        wait_until(lambda: "local proxy listening" in log.read_text() or agent.poll() is not None, 30)
        assert agent.poll() is None, log.read_text()
        agent.send_signal(signal.SIGINT)
        assert agent.wait(timeout=30) == 0, log.read_text()
    finally:
        agent.kill()
    assert "Received SIGINT, shutting down." in log.read_text()
    wrong = _windows_way([*foreground_flags("agent", "win32"), "--proxy-prot", "1"], tmp_path / "wrong.log")
    assert wrong.wait(timeout=60) == 1
    assert "--proxy-prot" in (tmp_path / "wrong.log").read_text()
