"""`python -m tunnel.ops.twistd_windows ARGS`: twistd ARGS, with a Twisted bug on Windows mended
first (how `fluidity agent`, `fluidity local` and the logon task run twistd on Windows).

Twisted 26.10 on CPython 3.12 for Windows raises NameError in its plugin scan, before any
dropin of ours is imported; the mend (a patch of the registry: tunnel/wire/filepath_windows.py)
must come first, so twistd starts from here on Windows.
"""

from __future__ import annotations

import sys

from tunnel.wire.filepath_windows import mend

__all__ = ["mend", "run"]


def run(args: list[str]) -> int:
    """twistd ARGS in this process, after the mend: 0 once it stopped on request (a usage error or a
    failure at start is twistd's own SystemExit, with its message)."""
    mend()  # the library patch for Twisted's filepath (tunnel/wire/filepath_windows.py)
    from twisted.scripts import twistd

    sys.argv = ["twistd", *args]  # what twistd parses; usage and errors name the command the user knows
    twistd.run()
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
