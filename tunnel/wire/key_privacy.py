"""Whether a private key file is private, judged the way its platform keeps files private.

POSIX: the mode bits (nothing for group or others). Windows has no such bits (a file there
always looks 0666 to `os.stat`): its access lists say who may read, so `icacls` is asked,
and a grant of read to anyone but the owner, SYSTEM or Administrators counts as exposed.
Writing a key follows the same split: created 0600 where modes exist; on Windows its
inherited grants are replaced by one for the user.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

# Principals a Windows user's own files are shared with by design.
_TRUSTED = ("NT AUTHORITY\\SYSTEM", "BUILTIN\\Administrators", "CREATOR OWNER")
_READS = re.compile(r"\((?:[^)]*,)?(F|M|RX|R|GR|GA)(?:,[^)]*)?\)")


def write_private(path: Path, data: bytes, windows: bool | None = None) -> None:
    """Create (or replace) the file readable by its owner only; never readable by others meanwhile."""
    windows = os.name == "nt" if windows is None else windows
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    fchmod = getattr(os, "fchmod", None)  # POSIX only before Python 3.13
    if fchmod is not None and not windows:
        fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    if fchmod is None and not windows:
        os.chmod(path, 0o600)
    if windows:
        _restrict_windows(path)


def _restrict_windows(path: Path) -> None:
    icacls, user = shutil.which("icacls"), os.environ.get("USERNAME")
    if icacls and user:
        subprocess.run([icacls, str(path), "/inheritance:r", "/grant:r", f"{user}:F"], capture_output=True, timeout=30)


def exposure(path: str, windows: bool | None = None, icacls_output: str | None = None) -> tuple[str, str] | None:
    """None when only the owner can read it, else (what is wrong, the command that fixes it)."""
    windows = os.name == "nt" if windows is None else windows
    if windows:
        return _windows_exposure(path, icacls_output)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # a missing file is reported where it is read, with the better message
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"{path} is readable by others (mode {stat.S_IMODE(mode):o})", f"chmod 600 {path}"
    return None


def readers(icacls_output: str, owner: str = "") -> list[str]:
    """The principals an `icacls FILE` listing grants read to, besides the owner and the system's own."""
    found = []
    for line in icacls_output.splitlines():
        line = line.strip()
        if ":" not in line or not _READS.search(line):
            continue
        principal = line.rsplit(":", 1)[0].strip()
        if "(DENY)" in line or any(principal.endswith(t) or principal == t for t in _TRUSTED):
            continue
        if owner and principal.lower().endswith("\\" + owner.lower()):
            continue
        found.append(principal)
    return found


def _windows_exposure(path: str, icacls_output: str | None) -> tuple[str, str] | None:
    if icacls_output is None:
        icacls = shutil.which("icacls")
        if not icacls:
            return None  # cannot judge here: say nothing rather than something wrong
        done = subprocess.run([icacls, path], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            return None
        icacls_output = done.stdout
    others = readers(icacls_output.replace(path, "", 1), os.environ.get("USERNAME", ""))
    if not others:
        return None
    user = os.environ.get("USERNAME", "%USERNAME%")
    return (
        f"{path} is readable by {', '.join(others)} (its access list)",
        f'icacls "{path}" /inheritance:r /grant:r {user}:F',
    )
