"""The `fluidity` command: certificates, and the local demo (server + agent on loopback)."""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import pki


def _certs(args) -> int:
    directory = Path(args.dir)
    try:
        if args.certs_command == "init":
            for path in pki.init(directory, force=args.force):
                print(f"wrote {path}")
        else:
            issued = pki.issue_client(directory, args.name, force=args.force)
            print(f"wrote {issued.cert_path}\nwrote {issued.key_path}")
    except pki.PKIError as e:
        print(f"fluidity certs: {e}", file=sys.stderr)
        return 1
    return 0


def _twistd() -> str:
    beside = Path(sys.executable).with_name("twistd")
    found = str(beside) if beside.exists() else shutil.which("twistd")
    if not found:
        raise SystemExit("fluidity: twistd not found; install the package with pip first")
    return found


def _wait_listening(port: int, process: subprocess.Popen, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def _local(args) -> int:
    """Run server and agent from the `*.local.yaml` configs until Ctrl-C."""
    configs = Path(args.configs)
    if pki.ensure_dev_set(Path(args.certs)):
        print(f"made a development CA and certificates in {args.certs}/")
    twistd = _twistd()
    children: list[subprocess.Popen] = []
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    roles = (("server", args.server_port, ["--port", str(args.server_port)]), ("agent", args.proxy_port, ["--proxy-port", str(args.proxy_port), "--server-port", str(args.server_port)]))
    status = 0
    try:
        for role, port, flags in roles:
            command = [twistd, "-n", "--pidfile=", f"fluidity-{role}", "--config", str(configs / f"{role}.local.yaml"), *flags]
            child = subprocess.Popen(command, start_new_session=True)
            children.append(child)
            if not _wait_listening(port, child, 20):
                print(f"fluidity: the {role} did not start (see its output above)", file=sys.stderr)
                return 1
        print(
            f"\nFluidity is running: server on 127.0.0.1:{args.server_port}, proxy on 127.0.0.1:{args.proxy_port}.\n"
            f"  curl -x http://127.0.0.1:{args.proxy_port} https://example.com\n"
            f"  curl --socks5-hostname 127.0.0.1:{args.proxy_port} ...   (once SOCKS5 lands)\n"
            f"  curl http://127.0.0.1:{args.proxy_port}/health\n"
            "Press Ctrl-C to stop both.\n",
            flush=True,
        )
        while not stopping:
            for child in children:
                if child.poll() is not None:
                    print(f"fluidity: {child.args[3]} exited with {child.returncode}", file=sys.stderr)
                    status = 1
                    stopping = True
            time.sleep(0.2)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fluidity", description="Fluidity personal tunnel")
    commands = parser.add_subparsers(dest="command", required=True)
    certs = commands.add_parser("certs", help="make the private CA and certificates")
    certs_commands = certs.add_subparsers(dest="certs_command", required=True)
    init = certs_commands.add_parser("init", help="CA, server certificate and one client certificate")
    client = certs_commands.add_parser("client", help="issue another client certificate")
    client.add_argument("name")
    for p in (init, client):
        p.add_argument("--dir", default="certs", help="where the files live (default: certs)")
        p.add_argument("--force", action="store_true", help="replace existing files")
    local = commands.add_parser("local", help="run server and agent on loopback (the demo)")
    local.add_argument("--certs", default="certs")
    local.add_argument("--configs", default="configs")
    local.add_argument("--server-port", type=int, default=8443)
    local.add_argument("--proxy-port", type=int, default=8080)
    args = parser.parse_args(argv)
    if args.command == "certs":
        return _certs(args)
    return _local(args)


if __name__ == "__main__":
    sys.exit(main())
