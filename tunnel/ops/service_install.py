"""`fluidity agent install-service` / `uninstall-service`: the agent as a login service.

Linux: a systemd *user* unit (no root), started at login and restarted on failure.
macOS: a launchd agent in ~/Library/LaunchAgents with the same behaviour. Windows: a Task
Scheduler task run at the user's logon, without elevation, restarted on failure, from a
task definition (XML) kept in %LOCALAPPDATA%\fluidity. All run what `fluidity agent --config
<file>` runs (`twistd -n fluidity-agent --config <file>`; on Windows `python -m
tunnel.ops.twistd_windows`, see twistd_command), with absolute paths, so the service does not
depend on the shell's PATH or working directory.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

from tunnel.ops.twistd_command import WINDOWS, foreground_flags

UNIT = "fluidity-agent.service"
LABEL = "io.fluidity.agent"
TASK = "Fluidity\\agent"  # Task Scheduler: the folder Fluidity, the task agent


class ServiceError(Exception):
    """One line for the user."""


def _config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")


def unit_path() -> Path:
    return _config_home() / "systemd" / "user" / UNIT


def plist_path() -> Path:
    return Path.home() / "Library" / "LaunchAgents" / f"{LABEL}.plist"


def task_path() -> Path:
    base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
    return Path(base) / "fluidity" / "fluidity-agent-task.xml"


def task_xml(twistd: list[str], config: Path, user: str = "") -> bytes:
    """The Task Scheduler definition: at this user's logon, as this user, not elevated,
    restarted every minute (up to 999 times) when it fails, never stopped for running long."""
    from xml.sax.saxutils import escape

    program, *arguments = command(twistd, config, WINDOWS)
    user = user or os.environ.get("USERNAME", "")
    who = f"<UserId>{escape(user)}</UserId>" if user else ""
    return f"""<?xml version="1.0" encoding="UTF-16"?>
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo><Description>Fluidity agent: a local proxy through the tunnel</Description></RegistrationInfo>
  <Triggers><LogonTrigger><Enabled>true</Enabled>{who}</LogonTrigger></Triggers>
  <Principals><Principal id="Author">{who}<LogonType>InteractiveToken</LogonType>
    <RunLevel>LeastPrivilege</RunLevel></Principal></Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>
    <RestartOnFailure><Interval>PT1M</Interval><Count>999</Count></RestartOnFailure>
    <Enabled>true</Enabled>
  </Settings>
  <Actions Context="Author"><Exec><Command>{escape(program)}</Command>
    <Arguments>{escape(subprocess.list2cmdline(arguments))}</Arguments></Exec></Actions>
</Task>
""".encode("utf-16")


def command(twistd: list[str], config: Path, platform: str = sys.platform) -> list[str]:
    """What the service runs: twistd (the command `twistd_command` gives) with the flags that
    platform's twistd takes, in the foreground, with this config."""
    return [*twistd, *foreground_flags("agent", platform), "--config", str(config)]


def unit_text(twistd: list[str], config: Path) -> str:
    quoted = " ".join(f'"{part}"' if " " in part else part for part in command(twistd, config, "linux"))
    return f"""[Unit]
Description=Fluidity agent: a local proxy through the tunnel
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={quoted}
Restart=on-failure
RestartSec=5
# SIGTERM stops it cleanly (exit 0); the agent then asks the control plane to stop the server if it is set to.
KillSignal=SIGTERM
TimeoutStopSec=30

[Install]
WantedBy=default.target
"""


def plist_text(twistd: list[str], config: Path, log: Path) -> bytes:
    return plistlib.dumps(
        {
            "Label": LABEL,
            "ProgramArguments": command(twistd, config, "darwin"),
            "RunAtLoad": True,
            "KeepAlive": {"SuccessfulExit": False},  # restarted when it fails, not when stopped
            "StandardOutPath": str(log),
            "StandardErrorPath": str(log),
            "ProcessType": "Interactive",
        }
    )


def _run(args: list[str]) -> tuple[bool, str]:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    return done.returncode == 0, (done.stderr or done.stdout).strip()


def install(twistd: list[str], config: Path, platform: str = sys.platform, start: bool = True) -> list[str]:
    """Write the unit, plist or task; enable and start it when `start`. Returns lines to print.
    `twistd` is the command that runs twistd on `platform` (`twistd_command`)."""
    config = config.resolve()
    if platform == "darwin":
        path, log = plist_path(), Path.home() / "Library" / "Logs" / "fluidity-agent.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(plist_text(twistd, config, log))
        steps = [["launchctl", "load", "-w", str(path)]]
    elif platform.startswith("linux"):
        path = unit_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(unit_text(twistd, config))
        steps = [["systemctl", "--user", "daemon-reload"], ["systemctl", "--user", "enable", "--now", UNIT]]
    elif platform == WINDOWS:
        path = task_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(task_xml(twistd, config))
        steps = [["schtasks", "/Create", "/TN", TASK, "/XML", str(path), "/F"], ["schtasks", "/Run", "/TN", TASK]]
    else:
        raise ServiceError(
            f"no service manager known for {platform}: run `fluidity agent --config {config}` from your login items"
        )
    out = [f"wrote {path}"]
    if not start:
        return [*out, "start it with: " + " && ".join(" ".join(step) for step in steps)]
    for step in steps:
        ok, said = _run(step) if shutil.which(step[0]) else (False, f"{step[0]} not found")
        if not ok:  # written but not running: say so, and exit non-zero
            raise ServiceError(
                f"wrote {path}, but could not run `{' '.join(step)}` ({said.splitlines()[0] if said else 'failed'}); "
                f"run: " + " && ".join(" ".join(s) for s in steps)
            )
    return [*out, "the agent starts at login and restarts if it fails; it is running now"]


def uninstall(platform: str = sys.platform) -> list[str]:
    if platform == WINDOWS:
        path = task_path()
        if shutil.which("schtasks"):
            _run(["schtasks", "/End", "/TN", TASK])
            ok, said = _run(["schtasks", "/Delete", "/TN", TASK, "/F"])
            if not ok and path.exists():
                raise ServiceError(
                    f"could not remove the task {TASK} ({said.splitlines()[0] if said else 'schtasks failed'})"
                )
        if not path.exists():
            return [f"nothing to remove: {path} does not exist"]
        path.unlink()
        return [f"removed the task {TASK} and {path}"]
    if platform == "darwin":
        path = plist_path()
        if path.exists() and shutil.which("launchctl"):
            _run(["launchctl", "unload", "-w", str(path)])
    else:
        path = unit_path()
        if path.exists() and shutil.which("systemctl"):
            _run(["systemctl", "--user", "disable", "--now", UNIT])
    if not path.exists():
        return [f"nothing to remove: {path} does not exist"]
    path.unlink()
    if platform != "darwin" and shutil.which("systemctl"):
        _run(["systemctl", "--user", "daemon-reload"])
    return [f"removed {path}"]
