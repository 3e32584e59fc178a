"""The `fluidity` command: certificates, the local demo (server + agent on loopback), and the
local control plane."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from deployment.server_port import SERVER_PORT
from tunnel.wire import pki


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
    """The twistd of the environment fluidity runs in (`twistd.exe` in a Windows venv's Scripts)."""
    here = Path(sys.executable)
    beside = next((here.with_name(n) for n in ("twistd", "twistd.exe") if here.with_name(n).exists()), None)
    found = str(beside) if beside else shutil.which("twistd")
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
            if not children.start(f"fluidity-{role}", [twistd, "-n", "--pidfile=", f"fluidity-{role}", *config], port):
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
                child.send_signal(signal.SIGTERM)
        for child in self.running:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()


def _api_key(given: str | None, host: str) -> str:
    """`--api-key` as given (env:VAR, file:PATH or keyring: never the key itself, which every
    user could read in the process list), else $FLUIDITY_API_KEY; ValueError says why not."""
    from tunnel.secret_source import api_key_entry, command_line_refusal, resolve

    if given is None:
        return os.environ.get("FLUIDITY_API_KEY", "")
    refusal = command_line_refusal(given)
    if refusal:
        raise ValueError(f"--api-key: {refusal}")
    return resolve(given, "--api-key", api_key_entry(host))


def _operator_api_key(given: str | None, status_url: str | None) -> str:
    from urllib.parse import urlsplit

    from tunnel.ops.operations import OperatorError

    try:
        return _api_key(given, urlsplit(status_url or "").hostname or "")
    except ValueError as e:
        raise OperatorError(str(e)) from None


def _control_plane(args) -> int:
    """Serve the Lambda handlers on a local port until Ctrl-C."""
    import os

    from twisted.internet import reactor
    from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from tunnel.ops.control_plane import make_site

    try:
        api_key = _api_key(args.api_key, args.host)
    except ValueError as e:
        print(f"fluidity control-plane: {e}", file=sys.stderr)
        return 2
    if not api_key:
        print(
            "fluidity control-plane: give --api-key env:VAR, file:PATH or keyring, or set FLUIDITY_API_KEY",
            file=sys.stderr,
        )
        return 2
    try:
        import boto3  # noqa: F401  (the handlers talk to AWS)
    except ImportError:
        print("fluidity control-plane: needs boto3 (pip install boto3, or pipx inject fluidity boto3)", file=sys.stderr)
        return 2
    for name, value in (
        ("CLUSTER_NAME", args.cluster),
        ("SERVICE_NAME", args.service),
        ("CONTAINER_PORT", args.container_port),
    ):
        if value is not None:
            os.environ[name] = str(value)
        os.environ.setdefault(
            name,
            {"CLUSTER_NAME": "fluidity", "SERVICE_NAME": "fluidity-server", "CONTAINER_PORT": str(SERVER_PORT)}[name],
        )
    if bool(args.tls_cert) != bool(args.tls_key):
        print("fluidity control-plane: give --tls-cert and --tls-key together", file=sys.stderr)
        return 2
    tls = None
    if args.tls_cert:
        from tunnel.ops.control_plane import tls_options

        try:
            tls = tls_options(args.tls_cert, args.tls_key)
        except ValueError as e:
            print(f"fluidity control-plane: {e}", file=sys.stderr)
            return 2
    scheme = "https" if tls else "http"
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    outcome = {"status": 0}

    def listening(port) -> None:
        address = port.getHost()
        print(
            f"control plane for {os.environ['CLUSTER_NAME']}/{os.environ['SERVICE_NAME']} on "
            f"{scheme}://{address.host}:{address.port}"
            " (POST /wake, GET /status, POST /kill; x-api-key required)",
            flush=True,
        )

    def failed(failure) -> None:
        print(
            f"fluidity control-plane: cannot listen on {args.host}:{args.port}: {failure.getErrorMessage()}",
            file=sys.stderr,
        )
        outcome["status"] = 1
        reactor.stop()

    endpoint: SSL4ServerEndpoint | TCP4ServerEndpoint
    if tls is not None:
        endpoint = SSL4ServerEndpoint(reactor, args.port, tls, interface=args.host)
    else:
        endpoint = TCP4ServerEndpoint(reactor, args.port, interface=args.host)
    reactor.callWhenRunning(lambda: endpoint.listen(make_site(reactor, api_key)).addCallbacks(listening, failed))
    reactor.run()
    return outcome["status"]


def _operate(args) -> int:
    """start / stop / status of the ECS service, with boto3."""
    from deployment.settings import Settings
    from tunnel.ops import operations

    settings = Settings(cluster=args.cluster, service=args.service)
    aws = operations.AwsTarget(region=args.region, profile=args.profile)
    try:
        if args.command == "start":
            allow_ip = args.allow_ip
            if allow_ip == "auto":
                api_key = _operator_api_key(args.api_key, args.status_url)
                if not args.status_url or not api_key:
                    raise operations.OperatorError(
                        "--allow-ip auto needs --status-url and --api-key (or FLUIDITY_STATUS_URL and FLUIDITY_API_KEY)"
                    )
                allow_ip = operations.my_address(args.status_url, api_key)
            elif allow_ip is not None:
                try:
                    allow_ip = str(ipaddress.IPv4Address(allow_ip))
                except ValueError:
                    raise operations.OperatorError(
                        f"--allow-ip takes an IPv4 address or auto, got {args.allow_ip!r}"
                    ) from None
            return operations.start(
                settings, args.timeout, args.poll_interval, args.write_config, aws=aws, allow_ip=allow_ip
            )
        if args.command == "stop":
            return operations.stop(settings, args.timeout, args.poll_interval, not args.no_wait, aws=aws)
        return operations.status(settings, args.json, aws=aws)
    except operations.OperatorError as e:
        print(f"fluidity {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fluidity {args.command}: interrupted", file=sys.stderr)
        return 130


def _cost(args) -> int:
    from pathlib import Path

    from tunnel.ops import costs

    stack: Path | None
    if args.stack:
        stack = Path(args.stack)
    else:  # the stack file of the folder it runs in (the repository's infra), else the defaults
        found = sorted(Path(".").glob("Pulumi.*.yaml"))
        if len(found) > 1:
            print(
                f"fluidity cost: several stack files here ({', '.join(f.name for f in found)}): pass --stack FILE",
                file=sys.stderr,
            )
            return 2
        stack = found[0] if found else None
    if (
        not 0 <= args.hours_per_month <= 744  # also refuses nan
        or not 0 <= args.gb_per_month <= 10**6
        or args.agents < 0
        or args.wakes_per_month < 0
    ):
        print(
            "fluidity cost: --hours-per-month must lie in 0-744, --gb-per-month in 0-1000000, --agents and "
            "--wakes-per-month must not be negative",
            file=sys.stderr,
        )
        return 2
    usage = costs.Usage(
        hours_per_month=args.hours_per_month,
        agents=args.agents,
        wakes_per_month=args.wakes_per_month,
        gb_per_month=args.gb_per_month,
    )
    from tunnel.ops.operations import OperatorError

    try:
        if args.month:
            print(costs.month_report(stack, args.region, args.json))
        else:
            print(costs.main(stack, usage, args.region, args.json))
    except (ValueError, OperatorError) as e:
        print(f"fluidity cost: {e}", file=sys.stderr)
        return 1
    return 0


class OneLineParser(argparse.ArgumentParser):
    """A mistyped command or flag is one line with a suggestion, not the usage text."""

    # What shell completion offers below a command beyond its own flags (`_completion_tree`).
    completion_words: list[str]
    completion_subcommands: dict[str, argparse.ArgumentParser]

    def error(self, message: str):
        import difflib
        import re

        known = list(self._option_string_actions)
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                known += list(action.choices)
                for sub in action.choices.values():
                    known += list(sub._option_string_actions)
        hint = ""
        named = re.search(r"(?:arguments?: |choice: ')(--?[\w-]+|[\w-]+)", message)
        if named:
            close = difflib.get_close_matches(named.group(1), known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
        self.exit(2, f"{self.prog}: {message}{hint} (see --help)\n")


def _words(parser: argparse.ArgumentParser) -> tuple[list[str], dict[str, argparse.ArgumentParser]]:
    options = [o for o in parser._option_string_actions if o.startswith("--")]
    subcommands: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            subcommands.update(action.choices)
            options += list(action.choices)
        elif action.choices and not action.option_strings:
            options += list(action.choices)  # positional choices (completion's shell)
    # `fluidity agent` / `server` hand their flags to twistd: the parser carries them for completion.
    options += getattr(parser, "completion_words", [])
    subcommands.update(getattr(parser, "completion_subcommands", {}))
    return sorted(set(options) | set(subcommands)), subcommands


def _completion_paths(parser: argparse.ArgumentParser) -> list[tuple[str, list[str]]]:
    """Every command path (`""`, `"certs"`, `"certs init"`, ...) and the words that may follow it."""
    paths = []

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        words, subs = _words(p)
        paths.append((path, words))
        for name, sub in subs.items():
            walk(sub, f"{path} {name}".strip())

    walk(parser, "")
    return paths


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """Completion from the parser itself (commands, sub-commands, flags, and the agent's and
    server's twistd flags), so it always matches the CLI: bash; zsh runs the bash script
    through bashcompinit; fish gets its own, built from the same paths."""
    paths = _completion_paths(parser)
    if shell == "fish":
        return _fish_script(paths)
    cases = [f'    "{path}") words="{" ".join(words)}" ;;' for path, words in paths]
    body = "\n".join(cases)
    known = "\n".join(f'    "{path}") echo 1 ;;' for path, _ in paths)
    bash = f"""_fluidity() {{
  local cur="${{COMP_WORDS[COMP_CWORD]}}" path="" i words
  for ((i = 1; i < COMP_CWORD; i++)); do
    case "${{COMP_WORDS[i]}}" in
      -*) ;;
      *) case " $(_fluidity_path "${{path:+$path }}${{COMP_WORDS[i]}}") " in
           " 1 ") path="${{path:+$path }}${{COMP_WORDS[i]}}" ;;
         esac ;;
    esac
  done
  case "$path" in
{body}
  esac
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
_fluidity_path() {{
  case "$1" in
{known}
    *) echo 0 ;;
  esac
}}
complete -F _fluidity fluidity"""
    if shell == "zsh":
        return (
            "(( $+functions[compdef] )) || { autoload -U +X compinit && compinit -u }\nautoload -U +X bashcompinit && "
            "bashcompinit\n" + bash
        )
    return bash


def _fish_script(paths: list[tuple[str, list[str]]]) -> str:
    """fish: one function finds the command path typed so far and prints what may follow."""
    known = " ".join(f"'{path}'" for path, _ in paths if path)
    cases = "\n".join(
        f"        case '{path}'\n            printf '%s\\n' {' '.join(words)}" for path, words in paths if words
    )
    return f"""function __fluidity_words
    set -l known {known}
    set -l tokens (commandline -opc)
    set -e tokens[1]
    set -l path ''
    for token in $tokens
        if string match -q -- '-*' $token
            continue
        end
        set -l candidate (string trim -- "$path $token")
        if contains -- $candidate $known
            set path $candidate
        end
    end
    switch $path
{cases}
    end
end
complete -c fluidity -f -a '(__fluidity_words)'"""


SERVICE_ACTIONS = ("install-service", "uninstall-service", "status")


def _service_parser(action: str) -> argparse.ArgumentParser:
    descriptions = {
        "install-service": (
            "Start the agent at login (systemd user unit, launchd agent or Windows logon task) from its config."
        ),
        "uninstall-service": "Remove what install-service installed.",
        "status": (
            "Is the running agent connected? Its tunnel, the server, streams and bytes, "
            "and the last error with its fix."
        ),
    }
    parser = OneLineParser(prog=f"fluidity agent {action}", description=descriptions[action])
    if action == "status":
        parser.add_argument(
            "--config",
            help="the agent's config, for its port (default: $FLUIDITY_CONFIG, else ~/.config/fluidity/agent.yaml)",
        )
        parser.add_argument(
            "--port", type=int, help="the agent's proxy port (default: the config's proxy_port, else 8080)"
        )
        parser.add_argument("--json", action="store_true", help="print the agent's /status.json")
    if action == "install-service":
        parser.add_argument(
            "--config", help="the agent's config (default: $FLUIDITY_CONFIG, else ~/.config/fluidity/agent.yaml)"
        )
        parser.add_argument("--no-start", action="store_true", help="only write the unit (or launchd agent)")
    return parser


def _twistd_flags(role: str) -> list[str]:
    """The flags `twistd fluidity-ROLE` takes: --config and one per setting."""
    from tunnel import config as cfg

    keys = cfg.AGENT_KEYS if role == "agent" else cfg.SERVER_KEYS
    return ["--help", "--config", *(f"--{key.flag}" for key in keys)]


def _role_help(role: str) -> int:
    """`fluidity agent --help`: what fluidity adds (the service commands), then twistd's own flags."""
    print(f"usage: fluidity {role} [FLAGS]   run the {role} in the foreground (twistd -n fluidity-{role} FLAGS)")
    if role == "agent":
        print("       fluidity agent install-service [--config FILE] [--no-start]   start the agent at login")
        print("       fluidity agent uninstall-service                              remove that")
        print(
            "       fluidity agent status [--port N] [--json]                     is the running agent connected? "
            "(also its page, http://127.0.0.1:8080/)"
        )
    print(f"\nFLAGS (those of `twistd fluidity-{role}`; each setting of the config file has one):", flush=True)
    done = subprocess.run([_twistd(), f"fluidity-{role}", "--help"], capture_output=True, text=True, timeout=60)
    lines = done.stdout.splitlines()
    start = next(
        (
            i
            for i, line in enumerate(lines)
            if line.lstrip().startswith("-c, --config") or line.lstrip().startswith("--config")
        ),
        0,
    )
    print("\n".join(lines[start:]) if lines else done.stderr)
    return 0 if done.returncode == 0 else 1


def _agent_status(args) -> int:
    """`fluidity agent status`: what the local agent's /status.json says, in lines."""
    import json
    import urllib.request

    from tunnel import config as cfg
    from tunnel.agent.status_page import human_age, human_bytes

    port = args.port
    if port is None:
        path = args.config or cfg.default_agent_config()
        try:
            port = cfg.load(cfg.AGENT_KEYS, path).proxy_port if path else 8080
        except cfg.ConfigError as e:
            print(f"fluidity agent status: {e}", file=sys.stderr)
            return 2
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            f"http://127.0.0.1:{port}/status.json", timeout=5
        ) as r:
            status = json.load(r)
    except (OSError, ValueError) as e:
        print(
            f"fluidity agent status: no agent answers on 127.0.0.1:{port} ({getattr(e, 'reason', e)}); start it with "
            f"`fluidity agent`",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    up = status["connected"]
    received, sent = status["traffic"]
    down, up_rate = status["rate"]
    print(
        f"tunnel:  {'up' if up else 'down'}"
        + (
            f" for {human_age(status['tunnel_uptime'] or 0)}, to {status['server']}"
            if up
            else f" (server {status['server']})"
        )
    )
    if status.get("server_dns_name"):
        print(f"         the server's name: {status['server_dns_name']}")
    print(f"server:  {status['server_state'] or 'no control plane configured'}")
    print(
        f"streams: {status['open_streams']} open"
        + "".join(f"\n         {n} to {dest}" for dest, n in list(status["streams_by_destination"].items())[:10])
    )
    print(
        f"bytes:   {human_bytes(received)} received, {human_bytes(sent)} sent; now {human_bytes(down)}/s down, "
        f"{human_bytes(up_rate)}/s up"
    )
    print(f"error:   {status['last_error'] or 'none'}")
    print(f"page:    http://127.0.0.1:{port}/")
    return 0 if up else 1


def _agent_service(action: str, rest: list[str]) -> int:
    """`fluidity agent install-service [--config FILE] [--no-start]` / `uninstall-service` / `status`."""
    from tunnel import config as cfg
    from tunnel.ops.service_install import ServiceError, install, uninstall

    args = _service_parser(action).parse_args(rest)
    if action == "status":
        return _agent_status(args)
    try:
        if action == "uninstall-service":
            lines = uninstall()
        else:
            config = args.config or cfg.default_agent_config()
            if not config:
                raise ServiceError("no agent config: pass --config FILE, or put it at ~/.config/fluidity/agent.yaml")
            try:
                cfg.load(cfg.AGENT_KEYS, config)  # refuse to install a service that cannot start
            except cfg.ConfigError as e:
                raise ServiceError(str(e)) from None
            lines = install(_twistd(), Path(config), start=not args.no_start)
    except ServiceError as e:
        print(f"fluidity agent {action}: {e}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fluidity")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """`fluidity ...`; a reader that stops early (`fluidity cost --json | head`) is no error."""
    try:
        code = _main(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["agent"] and argv[1:2] in ([a] for a in SERVICE_ACTIONS):
        return _agent_service(argv[1], argv[2:])
    if argv[:1] in (["agent"], ["server"]) and argv[1:] in (["--help"], ["-h"]):
        return _role_help(argv[0])
    if argv and argv[0] in ("agent", "server"):  # everything after it belongs to the service
        twistd = _twistd()
        os.execv(twistd, [twistd, "-n", "--pidfile=", f"fluidity-{argv[0]}", *argv[1:]])
    args = parser.parse_args(argv)
    return int(args.run(args))


def build_parser() -> OneLineParser:
    """Every command, each with the function that runs it (`args.run`)."""
    parser = OneLineParser(prog="fluidity", description="Fluidity personal tunnel")
    parser.add_argument("--version", action="version", version=f"fluidity {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_certs,
        _add_local,
        _add_roles,
        _add_control_plane,
        _add_proxy_password,
        _add_operations,
        _add_cost,
        _add_doctor,
    ):
        add(commands)
    completion = commands.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh or fish)",
        description='Print a completion script: `eval "$(fluidity completion bash)"` in ~/.bashrc, `zsh` in ~/.zshrc, '
        "or `fluidity completion fish > ~/.config/fish/completions/fluidity.fish`.",
    )
    completion.add_argument("shell", choices=("bash", "zsh", "fish"))

    def print_completion(args) -> int:
        print(completion_script(parser, args.shell))
        return 0

    completion.set_defaults(run=print_completion)
    return parser


def _add_certs(commands) -> None:
    certs = commands.add_parser("certs", help="make the private CA and certificates")
    certs_commands = certs.add_subparsers(dest="certs_command", required=True)
    init = certs_commands.add_parser("init", help="CA, server certificate and one client certificate")
    client = certs_commands.add_parser("client", help="issue another client certificate")
    client.add_argument("name")
    for p in (init, client):
        p.add_argument("--dir", default="certs", help="where the files live (default: certs)")
        p.add_argument("--force", action="store_true", help="replace existing files")
    certs.set_defaults(run=_certs)


def _add_local(commands) -> None:
    local = commands.add_parser(
        "local",
        help="run server and agent on loopback (the demo)",
        description="Run a server and an agent on loopback with development certificates until Ctrl-C.",
    )
    local.add_argument(
        "--certs",
        help=(
            "where the development CA and certificates live; made when missing (default: certs/ in a checkout, else "
            "~/.local/share/fluidity/local-certs)"
        ),
    )
    local.add_argument(
        "--configs",
        default="configs",
        help=(
            "the folder holding server.local.yaml and agent.local.yaml (default: %(default)s; without them, the same "
            "settings built in)"
        ),
    )
    local.add_argument(
        "--server-port", type=int, default=8443, help="the server's TLS port on 127.0.0.1 (default: %(default)d)"
    )
    local.add_argument(
        "--proxy-port",
        type=int,
        default=8080,
        help="the agent's HTTP/SOCKS5 proxy port on 127.0.0.1 (default: %(default)d)",
    )
    local.set_defaults(run=_local)


def _add_roles(commands) -> None:
    """`fluidity agent|server FLAGS`: parsed here only for --help and completion; _main hands them to twistd."""
    for role in ("agent", "server"):
        run = commands.add_parser(
            role,
            help=f"run the {role} in the foreground (what `twistd -n fluidity-{role}` runs, with the same flags)",
            add_help=False,
        )
        run.add_argument(
            "flags", nargs=argparse.REMAINDER, help=f"flags of `twistd fluidity-{role}` (--help lists them)"
        )
        run.completion_words = _twistd_flags(role)
        if role == "agent":
            run.completion_subcommands = {action: _service_parser(action) for action in SERVICE_ACTIONS}


def _add_control_plane(commands) -> None:
    plane = commands.add_parser("control-plane", help="serve wake/status/kill locally (API Gateway stand-in)")
    plane.add_argument(
        "--api-key",
        metavar="env:VAR|file:PATH|keyring",
        help="where the required x-api-key is (the key itself is refused here: the process list shows it; "
        "default: $FLUIDITY_API_KEY)",
    )
    plane.add_argument("--host", default="127.0.0.1")
    plane.add_argument("--port", type=int, default=8000)
    plane.add_argument("--cluster", help="ECS cluster (default: $CLUSTER_NAME or fluidity)")
    plane.add_argument("--service", help="ECS service (default: $SERVICE_NAME or fluidity-server)")
    plane.add_argument(
        "--container-port", type=int, help=f"server port reported to agents (default: $CONTAINER_PORT or {SERVER_PORT})"
    )
    plane.add_argument(
        "--tls-cert", metavar="PEM", help="serve HTTPS with this certificate instead of plain HTTP, as API Gateway does"
    )
    plane.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    plane.set_defaults(run=_control_plane)


def _add_proxy_password(commands) -> None:
    secret = commands.add_parser(
        "proxy-password",
        help="store the corporate proxy's password in the system's credential store",
        description="Store (or --delete) the password the agent gives a proxy that asks, "
        "in the system's credential store "
        "(Windows Credential Manager, the macOS Keychain, the Secret Service on Linux), for upstream_proxy_password: "
        "keyring.",
    )
    secret.add_argument(
        "--user", required=True, help="the proxy user name, as in upstream_proxy_user (e.g. 'CORP\\alice')"
    )
    secret.add_argument("--stdin", action="store_true", help="read the password from standard input instead of asking")
    secret.add_argument("--delete", action="store_true", help="remove the stored password")
    secret.set_defaults(run=_proxy_password)


def _add_operations(commands) -> None:
    for name, text in (
        ("start", "start the server (desiredCount 1), wait for its public IP"),
        ("stop", "stop the server (desiredCount 0)"),
        ("status", "what the server is doing, its IP and last activity"),
    ):
        op = commands.add_parser(
            name,
            help=text,
            description=text + ". Uses AWS_PROFILE, AWS_REGION (or AWS_DEFAULT_REGION) and AWS_ENDPOINT_URL.",
        )
        op.set_defaults(run=_operate)
        op.add_argument("--region", help="AWS region (default: $AWS_REGION, $AWS_DEFAULT_REGION, or the profile's)")
        op.add_argument("--profile", help="AWS profile (default: $AWS_PROFILE)")
        op.add_argument("--cluster", default="fluidity", help="ECS cluster (default: fluidity)")
        op.add_argument("--service", default="fluidity-server", help="ECS service (default: fluidity-server)")
        if name == "status":
            op.add_argument("--json", action="store_true", help="print JSON for scripts")
            continue
        op.add_argument(
            "--timeout",
            type=float,
            default=180.0 if name == "start" else 120.0,
            help="seconds to wait (default: %(default)g)",
        )
        op.add_argument(
            "--poll-interval", type=float, default=2.0, help="seconds between checks (default: %(default)g)"
        )
        if name == "start":
            op.add_argument(
                "--write-config",
                metavar="AGENT_YAML",
                help="set server_ip in this agent config, keeping everything else",
            )
            op.add_argument(
                "--allow-ip",
                metavar="IP|auto",
                help="open the server's port to this IPv4 (auto: the address the control plane's status endpoint sees)",
            )
            op.add_argument(
                "--status-url",
                default=os.environ.get("FLUIDITY_STATUS_URL"),
                help="the control plane's status URL, for --allow-ip auto (default: $FLUIDITY_STATUS_URL)",
            )
            op.add_argument(
                "--api-key",
                metavar="env:VAR|file:PATH|keyring",
                help="where its x-api-key is (the key itself is refused here: the process list shows it; default: "
                "$FLUIDITY_API_KEY)",
            )
        else:
            op.add_argument("--no-wait", action="store_true", help="return once ECS has been asked")


def _add_cost(commands) -> None:
    cost = commands.add_parser(
        "cost",
        help="what a month of the stack costs, line by line",
        description="What a month of the stack costs, line by line, at list price and after the free tiers.",
    )
    cost.add_argument(
        "--stack",
        metavar="FILE",
        help="the stack's settings (default: the one Pulumi.<stack>.yaml here, else Pulumi.dev.yaml)",
    )
    cost.add_argument(
        "--hours-per-month", type=float, default=40.0, help="hours the server runs (default: %(default)g)"
    )
    cost.add_argument("--agents", type=int, default=1, help="agent identities connected (default: %(default)d)")
    cost.add_argument("--wakes-per-month", type=int, default=30, help="(default: %(default)d)")
    cost.add_argument(
        "--gb-per-month",
        type=float,
        default=0.0,
        help="GB sent to agents (downloads through the tunnel), priced as data transfer out (default: %(default)g)",
    )
    cost.add_argument(
        "--month",
        action="store_true",
        help="the month so far from the server's metrics in CloudWatch, against fluidity:monthlyBudget (AWS "
        "credentials: AWS_PROFILE, AWS_REGION as for fluidity status)",
    )
    cost.add_argument("--region", help="AWS region (default: the stack's aws:region)")
    cost.add_argument("--json", action="store_true", help="print JSON for scripts")
    cost.set_defaults(run=_cost)


def _add_doctor(commands) -> None:
    doctor = commands.add_parser(
        "doctor",
        help="check the agent's set-up: config, certificates, the server, proxy, AWS",
        description=(
            "Check the agent's set-up end to end, one line a check with the fix; non-zero exit when something fails."
        ),
    )
    doctor.add_argument(
        "--config", help="the agent's config (default: $FLUIDITY_CONFIG, else ~/.config/fluidity/agent.yaml)"
    )
    doctor.add_argument(
        "--deploy",
        action="store_true",
        help=(
            "check instead what `pulumi up` needs: the Pulumi CLI and a backend, Docker with buildx, AWS credentials "
            "and region, the stack's certificate secrets"
        ),
    )
    doctor.add_argument("--stack", help="with --deploy: the stack (Pulumi.NAME.yaml; default: the only one there)")
    doctor.add_argument("--project", help="with --deploy: the folder holding Pulumi.yaml (default: this one)")
    doctor.set_defaults(run=_doctor)


def _doctor(args) -> int:
    if args.deploy:
        from tunnel.ops import deploy_checks

        return deploy_checks.main(args.project, args.stack)
    from tunnel.ops import doctor as doctor_checks

    return doctor_checks.main(args.config)


def _proxy_password(args) -> int:
    """Put the proxy password where `upstream_proxy_password: keyring` finds it."""
    import getpass

    from tunnel.agent.proxy_credentials import CredentialsError, forget, store

    try:
        if args.delete:
            found = forget(args.user)
            print(
                f"removed the proxy password of {args.user}"
                if found
                else f"no proxy password was stored for {args.user}"
            )
            return 0
        if args.stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = getpass.getpass(f"proxy password for {args.user}: ")
            if getpass.getpass("again: ") != password:
                print("fluidity proxy-password: the two did not match; nothing stored", file=sys.stderr)
                return 1
        if not password:
            print("fluidity proxy-password: an empty password; nothing stored", file=sys.stderr)
            return 1
        where = store(args.user, password)
    except CredentialsError as e:
        print(f"fluidity proxy-password: {e}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, EOFError):
        print("", file=sys.stderr)
        return 1
    print(
        f"stored the proxy password of {args.user} ({where}); the agent uses it with upstream_proxy_user: {args.user} "
        f"and upstream_proxy_password: keyring"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
