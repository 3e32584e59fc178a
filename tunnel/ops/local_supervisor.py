"""`fluidity local`: the demo's server and agent run as twistd children, watched until a
signal or one of them exits, and never left running after."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tunnel.ops.twistd_command import foreground_flags, stop_signal, twistd_command
from tunnel.wire import pki


def _twistd() -> list[str]:
    """The command that runs twistd on this platform (tunnel.ops.twistd_command)."""
    return twistd_command()


def _wait_listening(port: int, process: subprocess.Popen, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def _port_free(port: int) -> bool:
    """Whether the listeners could bind, on 127.0.0.1 and ::1 (where the machine has IPv6):
    with SO_REUSEADDR, as Twisted's own listener does on POSIX, so connections left in
    TIME_WAIT by the last run do not count as in use."""
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            s = socket.socket(family)
        except OSError:  # no IPv6 here
            continue
        with s:
            if os.name == "posix":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                if family == socket.AF_INET6 and e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    continue
                return False
    return True


def _die_with_parent() -> None:
    """In a child, before exec: on Linux, get SIGTERM when `fluidity local` dies, however it
    dies (SIGKILL included), so no server or agent is left holding the demo's ports."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: SIGHUP, SIGINT and SIGTERM still stop both


POSIX = os.name == "posix"


def _child_options() -> dict:
    """How the demo's server and agent are started: in their own session, dying with us on
    Linux (POSIX); in their own process group on Windows, which has neither."""
    if POSIX:
        return {"start_new_session": True, "preexec_fn": _die_with_parent}
    return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}


def _local(args) -> int:
    """Run server and agent from the `*.local.yaml` configs until Ctrl-C (or SIGTERM, or
    the terminal closing), and never leave them running after."""
    from tunnel.ops import local_demo

    configs = Path(args.configs)
    certs = Path(args.certs) if args.certs else local_demo.default_certs(configs)
    for what, port in (("server", args.server_port), ("proxy", args.proxy_port)):
        if not _port_free(port):
            print(
                f"fluidity: port {port} on 127.0.0.1 ({what}) is already in use; stop what holds it (another "
                f"`fluidity local`?) or pass --{'server' if what == 'server' else 'proxy'}-port",
                file=sys.stderr,
            )
            return 1
    if pki.ensure_dev_set(certs):
        print(f"made a development CA and certificates in {certs}/")
    files = local_demo.config_files(configs)
    twistd = _twistd()
    roles = (
        ("server", args.server_port, ["--port", str(args.server_port)]),
        ("agent", args.proxy_port, ["--proxy-port", str(args.proxy_port), "--server-port", str(args.server_port)]),
    )
    children = _Children()
    try:
        for role, port, flags in roles:
            config = ["--config", str(files[role]), *local_demo.cert_flags(role, certs), *flags]
            if not children.start(f"fluidity-{role}", [*twistd, *foreground_flags(role), *config], port):
                print(f"fluidity: the {role} did not start (see its output above)", file=sys.stderr)
                return 1
        print(_running_message(args.server_port, args.proxy_port), flush=True)
        return children.watch()
    finally:
        children.stop()


def _running_message(server_port: int, proxy_port: int) -> str:
    return (
        f"\nFluidity is running: server on 127.0.0.1:{server_port}, proxy on 127.0.0.1:{proxy_port} and "
        f"[::1]:{proxy_port}.\n"
        f"  curl -x http://127.0.0.1:{proxy_port} https://example.com\n"
        f"  curl --socks5-hostname 127.0.0.1:{proxy_port} https://example.com\n"
        f"  browsers: http://127.0.0.1:{proxy_port}/proxy.pac as the automatic proxy configuration URL\n"
        f"  curl http://127.0.0.1:{proxy_port}/health\n"
        "Press Ctrl-C to stop both.\n"
    )


class _Children:
    """`fluidity local`'s two processes: started in turn, watched until a signal or one of
    them exits, and always stopped."""

    def __init__(self) -> None:
        self.running: dict[subprocess.Popen, str] = {}  # each child, and what it runs
        self.stopping = False

        def stop(*_) -> None:
            self.stopping = True

        # SIGHUP (the terminal closing) exists on POSIX only; Windows has Ctrl-C and Ctrl-Break.
        for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), stop)

    def start(self, name: str, command: list[str], port: int) -> bool:
        """Start one; whether it is listening on `port` within 20 s."""
        child = subprocess.Popen(command, **_child_options())
        self.running[child] = name
        return _wait_listening(port, child, 20)

    def watch(self) -> int:
        """Until a signal (0) or a child's exit (1, said on stderr)."""
        status = 0
        while not self.stopping:
            for child, name in self.running.items():
                if child.poll() is not None:
                    print(f"fluidity: {name} exited with {child.returncode}", file=sys.stderr)
                    status = 1
                    self.stopping = True
            time.sleep(0.2)
        return status

    def stop(self) -> None:
        for child in self.running:
            if child.poll() is None:
                try:
                    child.send_signal(stop_signal())
                # Gone since, or (Windows) no console to carry a Ctrl-Break: CPython 3.11's os.kill
                # then raises SystemError (the OSError it set, not returned), 3.12 an OSError.
                except (OSError, SystemError):
                    child.kill()
        for child in self.running:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
