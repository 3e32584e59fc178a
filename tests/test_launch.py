"""The image's entry point picks the interpreter that can bind 443 only where the kernel
would grant its file capability (scripts/container-test runs the image both ways)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunnel.server.launch import interpreter, may_gain_bind_capability

DEFAULT = "Name:\tx\nNoNewPrivs:\t0\nCapBnd:\t00000000a80425fb\n"  # Docker's default set


@pytest.mark.parametrize(
    "status, expected",
    [
        (DEFAULT, True),
        (DEFAULT.replace("a80425fb", "a80421fb"), False),  # --cap-drop NET_BIND_SERVICE (bit 10)
        ("NoNewPrivs:\t0\nCapBnd:\t0000000000000000\n", False),  # --cap-drop ALL
        (DEFAULT.replace("NoNewPrivs:\t0", "NoNewPrivs:\t1"), False),  # no-new-privileges: file caps not granted
        ("NoNewPrivs:\t0\n", False),
        ("CapBnd:\tzz\n", False),
    ],
)
def test_the_capable_interpreter_only_where_exec_would_grant_it(status, expected):
    assert may_gain_bind_capability(status) is expected


def test_a_virtualenv_without_the_capable_copy_runs_the_plain_one(tmp_path):
    assert interpreter(tmp_path, DEFAULT) == Path(sys.executable)
    (tmp_path / "python3-net").write_bytes(b"")
    assert interpreter(tmp_path, DEFAULT) == tmp_path / "python3-net"
    assert interpreter(tmp_path, DEFAULT.replace("NoNewPrivs:\t0", "NoNewPrivs:\t1")) == Path(sys.executable)


@pytest.mark.processes
def test_the_entry_point_runs_twistd_with_the_arguments_it_was_given():
    """This checkout's venv has no python3-net: the plain interpreter runs twistd itself."""
    result = subprocess.run(
        [sys.executable, "-m", "tunnel.server.launch", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert result.returncode == 0 and "fluidity-server" in result.stdout, result.stdout + result.stderr
