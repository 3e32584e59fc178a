"""The server image's entry point: start twistd with the interpreter that may bind port 443.

The image runs as uid 10001 and listens on 443. Its virtualenv holds two copies of the
interpreter: `python3`, plain, and `python3-net`, which carries the file capability
CAP_NET_BIND_SERVICE. A runtime that removes that capability from the bounding set
(`--cap-drop`, Kubernetes' `drop: [ALL]`) makes the kernel refuse to execute a file that
asks for it, so only then, or under no-new-privileges (where file capabilities are not
granted), the plain copy runs: the server still starts on a port from 1024 up, and on 443
it exits with one line saying what it lacks (`tunnel/wire/listening.py`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CAP_NET_BIND_SERVICE = 10


def may_gain_bind_capability(status: str) -> bool:
    """From /proc/self/status: would executing a file holding CAP_NET_BIND_SERVICE grant it?"""
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    try:
        bounding = int(fields.get("CapBnd", "0").strip(), 16)
    except ValueError:
        return False
    return bool(bounding >> CAP_NET_BIND_SERVICE & 1) and fields.get("NoNewPrivs", "0").strip() == "0"


def interpreter(bin_dir: Path, status: str) -> Path:
    capable = bin_dir / "python3-net"
    return capable if capable.is_file() and may_gain_bind_capability(status) else Path(sys.executable)


def main(argv: list[str]) -> None:
    bin_dir = Path(sys.executable).parent
    chosen = interpreter(bin_dir, Path("/proc/self/status").read_text())
    os.execv(chosen, [str(chosen), str(bin_dir / "twistd"), *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
