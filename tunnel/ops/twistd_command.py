"""How `fluidity` starts twistd on each platform: the command, the flags that platform's twistd
takes, and a run in the foreground whose Ctrl-C and exit code are the caller's.

POSIX runs the `twistd` script pip installed (found where pip puts scripts, not only on PATH)
and becomes it (exec). Windows runs `python -m tunnel.ops.twistd_windows` (twistd, with
Twisted's CPython 3.12 path bug mended first) as a child, because exec there starts a new
process and returns at once."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

WINDOWS = "win32"


def scripts_dirs() -> list[Path]:
    """Where pip puts console scripts for this interpreter, in the order they are tried: beside
    it (a virtualenv, pipx), the install scheme's own (a system install), the user scheme's
    (`pip install --user`, ~/.local/bin, often not on PATH)."""
    found = [Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))]
    with contextlib.suppress(KeyError, ValueError):
        found.append(Path(sysconfig.get_path("scripts", sysconfig.get_preferred_scheme("user"))))
    return list(dict.fromkeys(found))


def find_twistd_posix() -> str | None:
    """POSIX: the `twistd` script of the environment fluidity runs in, else the one on PATH."""
    for directory in scripts_dirs():
        candidate = directory / "twistd"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("twistd")


def twistd_command(platform: str = sys.platform) -> list[str]:
    """The command that runs twistd here. Windows: this interpreter with the module that mends
    Twisted first (a bare `twistd.exe` dies scanning plugins on CPython 3.12)."""
    if platform == WINDOWS:
        return [sys.executable, "-m", "tunnel.ops.twistd_windows"]
    found = find_twistd_posix()
    if not found:
        raise SystemExit("fluidity: twistd not found; install the package with pip first")
    return [found]


def foreground_flags(role: str, platform: str = sys.platform) -> list[str]:
    """`-n` (no daemon) and the plugin. POSIX twistd also gets `--pidfile=` (no twistd.pid left
    in the working directory); Windows' twistd has no such flag and writes no pid file."""
    if platform == WINDOWS:
        return ["-n", f"fluidity-{role}"]
    return ["-n", "--pidfile=", f"fluidity-{role}"]


def stop_signal(platform: str = sys.platform) -> int:
    """What asks a twistd child to stop cleanly: SIGTERM on POSIX; on Windows CTRL_BREAK_EVENT,
    which reaches a child started in its own process group (`child_options`) as SIGBREAK."""
    if platform == WINDOWS:
        return int(getattr(signal, "CTRL_BREAK_EVENT", 1))
    return signal.SIGTERM


def child_options(platform: str = sys.platform) -> dict:
    """Windows: the child in a process group of its own, so a Ctrl-Break can be sent to it alone
    (and a Ctrl-C typed in the console reaches only us, who pass it on)."""
    if platform == WINDOWS:
        return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200)}
    return {}


# What a user or a service manager sends to stop the foreground command (SIGBREAK: Windows only).
STOP_REQUESTS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGBREAK") if hasattr(signal, name))


def run_child(command: list[str], forward: int, options: dict) -> int:
    """Run `command` until it exits and return its exit code; every stop request we get is
    passed on to it as `forward` (it decides when to exit, so its exit code stays its own)."""
    child = subprocess.Popen(command, **options)

    def pass_on(number: int, frame: object) -> None:
        with contextlib.suppress(OSError):  # already gone: wait() below returns its code
            child.send_signal(forward)

    previous = {number: signal.signal(number, pass_on) for number in STOP_REQUESTS}
    try:
        while True:
            try:  # a timeout, so that our signal handlers run (Windows' wait does not wake for them)
                return child.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                continue
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def run_in_foreground(command: list[str], platform: str = sys.platform) -> int:
    """POSIX: become the command (its signals and exit code are the caller's; never returns).
    Windows: run it as a child and return its exit code."""
    if platform != WINDOWS:
        os.execv(command[0], command)
    return run_child(command, stop_signal(platform), child_options(platform))
