"""The `fluidity` command's parser: every command and its flags, and one-line errors for a
mistyped one. What each command runs is `cli`'s; completion is built from this parser."""

from __future__ import annotations

import argparse
import os

from deployment.server_port import SERVER_PORT


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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fluidity")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> OneLineParser:
    """Every command and its flags; `args.command` names the one given (`cli.RUNS` runs it)."""
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
