"""The `fluidity` command's entry point and dispatch: `agent` and `server` go to twistd, every
other command to the function that runs it (`RUNS`). The parser is `cli_parser`, completion
`completion`, `fluidity local` `local_supervisor`, `fluidity agent status` `agent_status`."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

from deployment.server_port import SERVER_PORT
from tunnel.ops.agent_status import _agent_status
from tunnel.ops.cli_parser import SERVICE_ACTIONS, _service_parser, build_parser
from tunnel.ops.completion import completion_script
from tunnel.ops.local_supervisor import _local, _twistd
from tunnel.ops.twistd_command import foreground_flags, run_in_foreground
from tunnel.wire import pki


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
        return run_in_foreground([*foreground_flags(argv[0]), *argv[1:]])
    args = parser.parse_args(argv)
    return int(RUNS[args.command](args))


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
    done = subprocess.run([*_twistd(), f"fluidity-{role}", "--help"], capture_output=True, text=True, timeout=60)
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


def _completion(args) -> int:
    print(completion_script(build_parser(), args.shell))
    return 0


# What runs each command the parser knows (`agent` and `server` are twistd's, in `_main`).
RUNS = {
    "certs": _certs,
    "local": _local,
    "control-plane": _control_plane,
    "proxy-password": _proxy_password,
    "start": _operate,
    "stop": _operate,
    "status": _operate,
    "cost": _cost,
    "doctor": _doctor,
    "completion": _completion,
}


if __name__ == "__main__":
    sys.exit(main())
