"""How `fluidity` starts twistd on each platform: the command, the flags that platform's twistd
takes, and a run in the foreground whose Ctrl-C and exit code are the caller's.

POSIX runs the `twistd` script pip installed (found where pip puts scripts, not only on PATH)
and becomes it (exec). Windows runs twistd through `tunnel.ops.twistd_windows` (Twisted's
CPython 3.12 path bug mended first): in this process for `fluidity agent`, as
`python -m tunnel.ops.twistd_windows` for the logon task and `fluidity local`."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
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
    which reaches a child started in its own process group (as `fluidity local` starts them) as
    SIGBREAK, where there is a console to carry it."""
    if platform == WINDOWS:
        return int(getattr(signal, "CTRL_BREAK_EVENT", 1))
    return signal.SIGTERM


def run_in_foreground(args: list[str], platform: str = sys.platform) -> int:
    """Run twistd ARGS so that its Ctrl-C and exit code are the caller's. POSIX: become it (exec;
    never returns). Windows: exec there starts a new process and returns at once, and a Ctrl-Break
    cannot be passed on to a child when there is no console (a logon task, a pipe, Wine), so
    twistd runs here, in this process."""
    if platform != WINDOWS:
        command = [*twistd_command(platform), *args]
        os.execv(command[0], command)
    from tunnel.ops.twistd_windows import run

    return run(args)
