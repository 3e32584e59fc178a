"""How `fluidity` starts twistd on each platform (tunnel.ops.twistd_command): found where pip put
it, with the flags that platform's twistd takes, and on Windows run as a child whose stop and exit
code are passed through. Under Wine, scripts/windows-check runs the Windows side for real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import agent_config, free_port, wait_until

from tunnel.ops.twistd_command import child_options, foreground_flags, stop_signal, twistd_command

pytestmark = pytest.mark.processes

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def test_windows_twistd_gets_no_pidfile_flag_and_posix_twistd_does():
    """Issue 40: Windows' twistd refuses `--pidfile` (`option --pidfile not recognized`)."""
    assert foreground_flags("agent", "win32") == ["-n", "fluidity-agent"]
    assert foreground_flags("server", "linux") == ["-n", "--pidfile=", "fluidity-server"]
    assert twistd_command("win32") == [sys.executable, "-m", "tunnel.ops.twistd_windows"]
    assert child_options("win32")["creationflags"] == 0x200  # CREATE_NEW_PROCESS_GROUP
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


def _parent(command: list[str], forward: int, log: Path) -> subprocess.Popen:
    """A process that runs `command` as its child the Windows way (run_child), told to pass a
    stop on as `forward`; both write to `log`."""
    code = (
        "import sys, json; from tunnel.ops.twistd_command import run_child; "
        "sys.exit(run_child(json.loads(sys.argv[1]), int(sys.argv[2]), {}))"
    )
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", code, json.dumps(command), str(forward)], cwd=REPO, stdout=out, stderr=out
        )


def test_a_stop_reaches_the_child_and_its_exit_code_is_returned(certs, tmp_path):
    """What `fluidity agent` does on Windows: Ctrl-C to it is passed on to the agent, which stops
    cleanly (exit 0), and that exit code is fluidity's; a child that fails gives its own code."""
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(agent_config(certs, free_port(), proxy_port=free_port())))
    agent = [str(VENV_BIN / "twistd"), *foreground_flags("agent", "linux"), "--config", str(config)]
    log = tmp_path / "parent.log"
    parent = _parent(agent, signal.SIGTERM, log)
    try:
        wait_until(lambda: "local proxy listening" in log.read_text() or parent.poll() is not None, 30)
        children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
        assert len(children) == 1, log.read_text()
        parent.send_signal(signal.SIGINT)
        assert parent.wait(timeout=30) == 0, log.read_text()
    finally:
        parent.kill()
    assert "Received SIGTERM, shutting down." in log.read_text()
    assert not Path(f"/proc/{children[0]}").exists()  # the agent is gone with it
    failing = _parent([sys.executable, "-c", "import sys; sys.exit(3)"], signal.SIGTERM, tmp_path / "failing.log")
    assert failing.wait(timeout=30) == 3
