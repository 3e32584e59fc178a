"""`fluidity agent install-service`: a systemd user unit (checked by systemd-analyze, and its
command run for real) or a launchd agent, in a temporary HOME, as a user would."""

from __future__ import annotations

import os
import plistlib
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from support import FLUIDITY, Proc, free_port, server_config, start_twistd, user_home, wait_connected, wait_for_port


@pytest.fixture
def home(certs, tmp_path):
    return user_home(certs, tmp_path)


def user_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("FLUIDITY_CONFIG", "XDG_CONFIG_HOME")}
    env["HOME"] = str(home)
    return env


def write_config(home: Path, server_port: int, proxy_port: int) -> Path:
    path = home / ".config" / "fluidity" / "agent.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "proxy_port": proxy_port,
                "server_ip": "127.0.0.1",
                "server_port": server_port,
                "cert_file": "certs/client.pem",
                "key_file": "certs/client.key",
                "ca_file": "certs/ca.pem",
            }
        )
    )
    return path


@pytest.mark.processes
def test_the_unit_is_valid_and_its_command_runs_the_agent(certs, home, tmp_path):
    server = start_twistd("server", server_config(certs), tmp_path)
    proxy_port = free_port()
    write_config(home, server.port, proxy_port)
    done = subprocess.run(
        [FLUIDITY, "agent", "install-service", "--no-start"],
        capture_output=True,
        text=True,
        timeout=60,
        env=user_env(home),
    )
    assert done.returncode == 0, done.stderr
    unit = home / ".config" / "systemd" / "user" / "fluidity-agent.service"
    text = unit.read_text()
    assert "Restart=on-failure" in text and "WantedBy=default.target" in text
    if shutil.which("systemd-analyze"):
        verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
        assert verified.returncode == 0, verified.stderr
    else:
        assert not os.environ.get("CI"), "CI installs systemd-analyze (.ci/run)"
    exec_start = next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ExecStart="))
    log = tmp_path / "unit.log"
    with open(log, "wb") as out:  # what systemd would run, from / with the user's HOME
        process = subprocess.Popen(
            shlex.split(exec_start), cwd="/", env=user_env(home), stdout=out, stderr=subprocess.STDOUT
        )
    agent = Proc("agent", process, log, proxy_port)
    try:
        wait_for_port(proxy_port, process=process)
        assert wait_connected(agent)["connected"]
    finally:
        assert agent.stop() == 0
        server.stop()
    removed = subprocess.run(
        [FLUIDITY, "agent", "uninstall-service"], capture_output=True, text=True, timeout=60, env=user_env(home)
    )
    assert removed.returncode == 0 and not unit.exists()
    again = subprocess.run(
        [FLUIDITY, "agent", "uninstall-service"], capture_output=True, text=True, timeout=60, env=user_env(home)
    )
    assert again.returncode == 0 and "nothing to remove" in again.stdout


def test_a_launchd_agent_on_macos(home, monkeypatch):
    from tunnel.ops import service_install

    monkeypatch.setenv("HOME", str(home))
    config = write_config(home, 8443, 8080)
    lines = service_install.install(["/opt/fluidity/bin/twistd"], config, platform="darwin", start=False)
    plist = plistlib.loads((home / "Library" / "LaunchAgents" / "io.fluidity.agent.plist").read_bytes())
    assert plist["ProgramArguments"] == [
        "/opt/fluidity/bin/twistd",
        "-n",
        "--pidfile=",
        "fluidity-agent",
        "--config",
        str(config.resolve()),
    ]
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] == {"SuccessfulExit": False}
    assert "launchctl load -w" in lines[-1]


@pytest.mark.processes
def test_a_config_that_cannot_start_is_not_installed(home):
    (home / ".config" / "fluidity" / "agent.yaml").write_text("proxy_prot: 8080\n")
    done = subprocess.run(
        [FLUIDITY, "agent", "install-service", "--no-start"],
        capture_output=True,
        text=True,
        timeout=60,
        env=user_env(home),
    )
    assert (
        done.returncode == 1
        and "unknown key 'proxy_prot'" in done.stderr
        and len(done.stderr.strip().splitlines()) == 1
    )
    assert not (home / ".config" / "systemd").exists()


@pytest.mark.processes
def test_a_daemonised_agent_writes_its_log_where_logfile_says(certs, tmp_path):
    """twistd without -n: before, our JSON/text observer wrote to a closed stdout and the log was lost."""
    logfile, pidfile = tmp_path / "agent.log", tmp_path / "agent.pid"
    args = [
        "--logfile",
        str(logfile),
        "--pidfile",
        str(pidfile),
        "fluidity-agent",
        "--server-ip",
        "127.0.0.1",
        "--server-port",
        "1",
        "--proxy-port",
        str(free_port()),
        "--cert-file",
        certs.path("client.pem"),
        "--key-file",
        certs.path("client.key"),
        "--ca-file",
        certs.path("ca.pem"),
    ]
    from support import TWISTD, wait_until

    done = subprocess.run([TWISTD, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    try:
        assert wait_until(lambda: logfile.exists() and "local proxy listening" in logfile.read_text(), 15)
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), 15)


@pytest.mark.processes
def test_a_service_manager_that_fails_is_a_failure(home, tmp_path):
    """Issue 26, item 7: a systemctl that cannot reach the user's manager (no session bus,
    as over ssh or in a container) makes install-service exit 1 saying what to run."""
    write_config(home, 1, free_port())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text("#!/bin/sh\necho 'Failed to connect to bus: No medium found' >&2\nexit 1\n")
    (bin_dir / "systemctl").chmod(0o755)
    env = {**user_env(home), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run([FLUIDITY, "agent", "install-service"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1, done
    assert (
        "could not run `systemctl --user daemon-reload` (Failed to connect to bus" in done.stderr
        and "run: systemctl --user" in done.stderr
    )


def test_a_logon_task_on_windows(home, monkeypatch, tmp_path):
    """Issue 26, item 8: Task Scheduler's task definition, as `schtasks /Create /XML` reads
    it; with no schtasks here, installing it is a failure that says what to run. Issue 40: its
    command is what `fluidity agent` runs on Windows, without POSIX twistd's --pidfile."""
    import xml.etree.ElementTree as ET

    from tunnel.ops import service_install, twistd_command

    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "AppData" / "Local"))
    monkeypatch.setenv("USERNAME", "alice")
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    config = write_config(home, 8443, 8080)
    python = r"C:\Users\alice\pipx\venvs\fluidity\Scripts\python.exe"
    monkeypatch.setattr("sys.executable", python)
    twistd = twistd_command.twistd_command("win32")
    lines = service_install.install(twistd, config, platform="win32", start=False)
    path = tmp_path / "AppData" / "Local" / "fluidity" / "fluidity-agent-task.xml"
    assert lines[0] == f"wrote {path}" and "schtasks /Create /TN Fluidity\\agent /XML" in lines[-1], lines
    ns = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}
    task = ET.fromstring(path.read_bytes().decode("utf-16").split("?>", 1)[1])
    assert task.find("t:Actions/t:Exec/t:Command", ns).text == python
    arguments = task.find("t:Actions/t:Exec/t:Arguments", ns).text
    assert arguments == f"-m tunnel.ops.twistd_windows -n fluidity-agent --config {config.resolve()}"
    assert task.find("t:Triggers/t:LogonTrigger/t:UserId", ns).text == "alice"
    assert task.find("t:Principals/t:Principal/t:RunLevel", ns).text == "LeastPrivilege"
    assert task.find("t:Settings/t:RestartOnFailure/t:Count", ns).text == "999"
    with pytest.raises(service_install.ServiceError, match="could not run `schtasks /Create"):
        service_install.install(twistd, config, platform="win32", start=True)
    assert service_install.uninstall(platform="win32") == [f"removed the task Fluidity\\agent and {path}"]
    assert "nothing to remove" in service_install.uninstall(platform="win32")[0]
