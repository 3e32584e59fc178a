"""`python -m tunnel.ops.twistd_windows ARGS`: twistd ARGS, with a Twisted bug on Windows mended
first (how `fluidity agent`, `fluidity local` and the logon task run twistd on Windows).

Twisted 26.10's `twisted/python/filepath.py` imports `PureWindowsPath` only when
`sys.version_info <= (3, 12)`, false for every 3.12.x, while `_isreserved` (Windows only) calls it
on every Python below 3.13: on CPython 3.12 for Windows every `FilePath.child()` raises NameError,
and twistd dies scanning its plugins before any of ours is imported. `mend` gives the module the
name it lacks, only where `_isreserved` is the one written against (fingerprinted) and the name is
missing; anywhere else it changes nothing. upstream/twisted-filepath-windows-312.md is the report.
"""

from __future__ import annotations

import pathlib
import sys
from types import ModuleType

from tunnel.wire.patches import source_fingerprint

# sha256 (first 16 hex digits) of `_isreserved` as Twisted 26.10.0 defines it for Windows before 3.13.
WRITTEN_AGAINST = "5bfd7830b919c79c"
MISSING = "PureWindowsPath"


def mend(filepath: ModuleType) -> bool:
    """Whether it gave Twisted's filepath module the `PureWindowsPath` its `_isreserved` calls:
    only when the name is missing and `_isreserved` is exactly the function written against."""
    if MISSING in vars(filepath):
        return False  # imported as intended (before 3.12, or a Twisted that fixed the guard)
    isreserved = getattr(filepath, "_isreserved", None)  # defined on Windows only
    if isreserved is None or source_fingerprint(isreserved) != WRITTEN_AGAINST:
        return False
    if MISSING not in isreserved.__code__.co_names:
        return False
    setattr(filepath, MISSING, pathlib.PureWindowsPath)
    return True


def run(args: list[str]) -> int:
    """twistd ARGS in this process, after the mend: 0 once it stopped on request (a usage error or a
    failure at start is twistd's own SystemExit, with its message)."""
    from twisted.python import filepath

    mend(filepath)
    from twisted.scripts import twistd

    sys.argv = ["twistd", *args]  # what twistd parses; usage and errors name the command the user knows
    twistd.run()
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
