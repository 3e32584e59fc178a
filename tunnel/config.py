"""YAML configuration for the server and the agent, with one schema per role.

The schema drives three things at once: validation of the YAML file (unknown keys,
wrong types: one line naming the key and the file), the twistd command-line flags
that override each key, and the defaults. Errors surface before anything listens.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar

import yaml

from deployment.server_port import SERVER_PORT
from tunnel.bypass import DEFAULT_BYPASS, check_bypass
from tunnel.proxy_trust import check_allowed as check_proxy_allow
from tunnel.redaction import redact_url
from tunnel.secret_source import command_line_refusal


class ConfigError(Exception):
    """One line a user can act on: which file or key, and what is wrong with it."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """`60s`, `5m`, `1h`, `250ms` or plain seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 5m or a number of seconds")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"expected a duration like 30s, 5m or a number of seconds, got {value!r}")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _parse_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a whole number")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if not re.fullmatch(r"-?\d+", text):
        raise ValueError(f"expected a whole number, got {value!r}")
    return int(text)


def _parse_str(value: Any) -> str:
    if isinstance(value, (dict, list)):
        raise ValueError("expected a single value")
    return str(value)


def _parse_str_list(value: Any) -> list[str]:
    if isinstance(value, str):  # the command line gives comma-separated text
        return [item.strip() for item in value.split(",") if item.strip()]
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
        raise ValueError("expected a list of strings")
    return [str(v) for v in value]


def _ranged(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        number = _parse_int(value)
        if not low <= number <= high:
            raise ValueError(f"must be between {low} and {high}, got {number}")
        return number

    return parse


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return text

    return parse


LOOPBACK_HOSTS = ("127.0.0.1", "::1")  # `localhost` is ::1 first on many systems


def _parse_listen_hosts(value: Any) -> list[str]:
    """One address or several (a list, or comma-separated text): each an IP literal."""
    hosts = _parse_str_list(value) if isinstance(value, (str, list)) else _parse_str_list(_parse_str(value))
    if not hosts:
        raise ValueError("expected at least one address, e.g. 127.0.0.1")
    checked = []
    for host in hosts:
        bare = host.strip().strip("[]")
        try:
            checked.append(str(ipaddress.ip_address(bare)))
        except ValueError:
            raise ValueError(
                f"{host!r} is not an IP address (the proxy listens on addresses, e.g. 127.0.0.1 or ::1)"
            ) from None
    return list(dict.fromkeys(checked))


def _parse_pac_bypass(value: Any) -> list[str]:
    return check_bypass(_parse_str_list(value))


def _parse_proxy_allow(value: Any) -> list[str]:
    return check_proxy_allow(_parse_str_list(value))


def _parse_optional_bool(value: Any) -> bool | None:
    return None if value is None else _parse_bool(value)


PORT = _ranged(0, 65535)
LOG_LEVELS = _choice("debug", "info", "warn", "error", "critical")
LOG_FORMATS = _choice("text", "json")


@dataclass(frozen=True)
class Key:
    """One setting as the YAML file and the command line see it: derived from its field."""

    name: str  # dotted for nested blocks: "metrics.namespace"
    parse: Callable[[Any], Any]
    default: Any
    help: str
    secret: Callable[[str], str] | None = None  # why a value may not be given as a flag ("" when it may)

    @property
    def flag(self) -> str:
        return self.name.replace(".", "-").replace("_", "-")


def setting(parse: Callable[[Any], Any], default: Any, help: str, secret: Callable[[str], str] | None = None) -> Any:
    """Declare a setting once, as a settings field: how its text is read, its default, what
    it is for. The key, its flag, its `--help` line and its documentation come from here.
    A `secret` one is kept out of reprs, and `secret(value)` says why a value may not be
    given as a flag (a command line is readable by every user of the machine)."""
    return field(default=default, repr=secret is None, metadata={"parse": parse, "help": help, "secret": secret})


def _password_in_url(value: str) -> str:
    """A proxy URL with a password may not be a flag; one without may."""
    if redact_url(value.strip()) == value.strip():
        return ""
    return (
        "a password in the URL is refused on a command line, where every user of this machine can read it (the "
        "process list): leave it out (the user may stay) and give --upstream-proxy-password env:VAR, file:PATH or "
        "keyring, or set the URL in the config file"
    )


def _cert(role: str, what: str) -> str:
    return f"certs/{role}.{what}"


# -- typed, frozen settings: what `load` returns, each key declared once ---------------------
@dataclass(frozen=True)
class MetricsSettings:
    emit_metrics: bool = setting(_parse_bool, False, "publish CloudWatch metrics")
    metrics_interval: float = setting(parse_duration, 60.0, "seconds between metric publications")
    namespace: str = setting(_parse_str, "Fluidity", "CloudWatch namespace")
    service_name: str = setting(_parse_str, "fluidity-server", "ServiceName dimension")
    transport: str = setting(
        _choice("api", "emf"),
        "api",
        "api: PutMetricData calls (boto3); emf: embedded-metric-format lines on stdout, for CloudWatch Logs to "
        "turn into metrics",
    )
    per_agent: bool = setting(
        _parse_bool,
        False,
        "also publish ActiveConnections per agent identity (one more series, and monthly charge, per agent)",
    )


_CERT_HELP = "certificate (PEM path, or env:VAR holding PEM text)"
_KEY_HELP = "private key (PEM path, or env:VAR)"
_CA_HELP = "CA that signs the peer (PEM path, or env:VAR)"
_LOG_LEVEL_HELP = "debug, info, warn, error"
_LOG_FORMAT_HELP = "text or json (one JSON object a line, for CloudWatch)"


@dataclass(frozen=True)
class ServerSettings:
    role: ClassVar[str] = "server"

    host: str = setting(_parse_str, "0.0.0.0", "address the TLS listener binds")
    port: int = setting(
        PORT,
        SERVER_PORT,
        "TLS listener port (443: what corporate proxies let through; below 1024 needs CAP_NET_BIND_SERVICE, which "
        "the server image grants)",
    )
    cert_file: str = setting(_parse_str, _cert("server", "pem"), _CERT_HELP)
    key_file: str = setting(_parse_str, _cert("server", "key"), _KEY_HELP)
    ca_file: str = setting(_parse_str, _cert("ca", "pem"), _CA_HELP)
    log_level: str = setting(LOG_LEVELS, "info", _LOG_LEVEL_HELP)
    log_format: str = setting(LOG_FORMATS, "text", _LOG_FORMAT_HELP)
    max_connections: int = setting(_ranged(1, 100000), 64, "most authenticated agent connections at once")
    handshake_timeout: float = setting(
        parse_duration,
        5.0,
        "a connection must finish its TLS handshake (client certificate included) this soon",
    )
    max_handshakes: int = setting(
        _ranged(1, 100000),
        256,
        "most connections still in their TLS handshake; the oldest makes room for a new one",
    )
    max_handshakes_per_source: int = setting(
        _ranged(1, 100000),
        16,
        "most connections one address may hold in their TLS handshake",
    )
    max_streams: int = setting(_ranged(1, 100000), 2000, "most concurrent tunnelled connections per agent connection")
    revoked_file: str = setting(
        _parse_str,
        "",
        "client certificates refused by serial or sha256 fingerprint; re-read when it changes",
    )
    max_streams_per_agent: int = setting(
        _ranged(0, 1000000),
        0,
        "most concurrent streams one agent identity (certificate CN) may hold across its connections; 0: no limit",
    )
    dial_timeout: float = setting(parse_duration, 10.0, "give up dialling a destination after this long (504)")
    drain_timeout: float = setting(parse_duration, 20.0, "on stop, how long open streams may finish")
    keepalive_interval: float = setting(parse_duration, 30.0, "PING each agent this often")
    keepalive_timeout: float = setting(parse_duration, 20.0, "drop an agent that does not answer a PING this long")
    egress_allow: tuple[str, ...] = setting(_parse_str_list, (), "CIDR[:ports] opened despite the default deny list")
    metrics: MetricsSettings = field(default_factory=MetricsSettings)  # the `metrics:` block
    source: str = field(default="defaults", compare=False)  # the file it came from, for error lines


@dataclass(frozen=True)
class LifecycleSettingsBlock:
    """The `lifecycle:` block as written; `agent.lifecycle.settings_from` checks and derives it."""

    wake_endpoint: str = setting(_parse_str, "", "control-plane URL that starts the server")
    kill_endpoint: str = setting(_parse_str, "", "control-plane URL that stops the server")
    status_endpoint: str = setting(_parse_str, "", "control-plane URL that reports the server")
    api_key: str = setting(
        _parse_str,
        "",
        "x-api-key for the control plane: env:VAR, file:PATH, keyring (the system's credential store, entry "
        "fluidity-control-plane and the wake endpoint's host), or the key (in the config file only)",
        secret=command_line_refusal,
    )
    wake_timeout: float = setting(parse_duration, 90.0, "how long a wake may take")
    wake_retry_interval: float = setting(parse_duration, 5.0, "poll interval while waking")
    kill_on_exit: bool | None = setting(
        _parse_optional_bool,
        None,
        "stop the server when the agent stops (default: yes when kill_endpoint is set)",
    )
    request_timeout: float = setting(parse_duration, 10.0, "give up one control-plane request after this long")


@dataclass(frozen=True)
class AgentSettings:
    role: ClassVar[str] = "agent"

    proxy_host: tuple[str, ...] = setting(
        _parse_listen_hosts,
        LOOPBACK_HOSTS,
        "addresses the local proxy listens on: one, or a list (default 127.0.0.1 and ::1; 0.0.0.0 or :: must be "
        "explicit)",
    )
    proxy_port: int = setting(PORT, 8080, "local HTTP proxy port")
    local_names: tuple[str, ...] = setting(
        _parse_str_list,
        (),
        "names besides localhost and loopback addresses that /health and /proxy.pac answer to (a LAN name when "
        "proxy_host is 0.0.0.0); any other Host gets 403",
    )
    server_ip: str = setting(_parse_str, "", "the server's address (IP or name)")
    server_port: int = setting(PORT, SERVER_PORT, "the server's TLS port")
    server_name: str = setting(_parse_str, "fluidity-server", "name the server certificate must carry")
    cert_file: str = setting(_parse_str, _cert("client", "pem"), _CERT_HELP)
    key_file: str = setting(_parse_str, _cert("client", "key"), _KEY_HELP)
    ca_file: str = setting(_parse_str, _cert("ca", "pem"), _CA_HELP)
    log_level: str = setting(LOG_LEVELS, "info", _LOG_LEVEL_HELP)
    log_format: str = setting(LOG_FORMATS, "text", _LOG_FORMAT_HELP)
    connect_timeout: float = setting(parse_duration, 10.0, "give up a TLS connection attempt after this long")
    keepalive_interval: float = setting(parse_duration, 15.0, "PING the server this often")
    keepalive_timeout: float = setting(parse_duration, 10.0, "reconnect when a PING gets no answer this long")
    probe_timeout: float = setting(
        parse_duration,
        3.0,
        "a stream opened after a second's silence from the server sends a PING with it; no answer this soon and "
        "the connection is replaced (a middlebox forgot the flow), the stream opened again on the new one",
    )
    reconnect_max_delay: float = setting(parse_duration, 5.0, "longest wait between reconnection attempts")
    tunnel_wait: float = setting(parse_duration, 5.0, "hold a client this long while the tunnel (re)connects, then 503")
    optimistic_connect: bool = setting(_parse_bool, True, "answer CONNECT at once for destinations reached before")
    max_header_bytes: int = setting(_ranged(1024, 1 << 20), 65536, "largest request head a client may send (431)")
    head_timeout: float = setting(
        parse_duration,
        60.0,
        "a local client must send a complete request head (or SOCKS request) this soon; 0: never times out",
    )
    pac_bypass: tuple[str, ...] = setting(
        _parse_pac_bypass, DEFAULT_BYPASS, "hosts and networks /proxy.pac sends DIRECT"
    )
    upstream_proxy: str = setting(
        _parse_str,
        "",
        "reach the server (and the control plane) through this proxy: http://user:pass@host:port, https://... "
        "(TLS to the proxy), or auto (the platform's PAC file: its settings, then WPAD); default $HTTPS_PROXY",
        secret=_password_in_url,
    )
    pac_url: str = setting(
        _parse_str,
        "",
        "with upstream_proxy: auto, the PAC file to use (http(s):// or a path) instead of looking for one",
    )
    upstream_proxy_ca: str = setting(
        _parse_str,
        "",
        "CA (PEM path) an https:// upstream proxy's certificate must chain to; default the system's",
    )
    upstream_proxy_auth_allow: tuple[str, ...] = setting(
        _parse_proxy_allow,
        (),
        "proxies the agent finds by itself (PAC file, WPAD, system settings) that may still be answered with "
        "credentials: host names, *.domain patterns or addresses (a proxy you name in upstream_proxy or "
        "$HTTPS_PROXY needs no entry)",
    )
    upstream_proxy_user: str = setting(
        _parse_str,
        "",
        "user name for a proxy that asks, when its URL has none (auto, $HTTPS_PROXY), e.g. CORP\\alice",
    )
    upstream_proxy_password: str = setting(
        _parse_str,
        "",
        "that user's password: env:VAR, file:PATH, keyring (the system's credential store; fluidity "
        "proxy-password stores it), or the password (in the config file only)",
        secret=command_line_refusal,
    )
    lifecycle: LifecycleSettingsBlock = field(default_factory=LifecycleSettingsBlock)  # the `lifecycle:` block
    source: str = field(default="defaults", compare=False)


Settings = ServerSettings | AgentSettings


S = typing.TypeVar("S", ServerSettings, AgentSettings)


class Schema(tuple[Key, ...], typing.Generic[S]):
    """A role's keys in field order, derived from its settings class (`settings`, `role`)."""

    settings: type[S]
    role: str

    def __new__(cls, settings: type[S]) -> Schema[S]:
        schema = super().__new__(cls, _keys_of(settings))
        schema.settings, schema.role = settings, settings.role
        return schema


def _keys_of(cls: type, prefix: str = "") -> list[Key]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            keys += _keys_of(hints[f.name], f"{prefix}{f.name}.")
        elif "parse" in f.metadata:
            default = list(f.default) if isinstance(f.default, tuple) else f.default
            keys.append(
                Key(prefix + f.name, f.metadata["parse"], default, f.metadata["help"], f.metadata.get("secret"))
            )
    return keys


SERVER_KEYS = Schema(ServerSettings)
AGENT_KEYS = Schema(AgentSettings)


def _build(cls, values: dict[str, Any], prefix: str = "", **extra: Any):
    hints = typing.get_type_hints(cls)
    kwargs = dict(extra)
    for f in fields(cls):
        if not is_dataclass(hints[f.name]) and "parse" not in f.metadata:
            continue  # not a setting (`source`)
        if is_dataclass(hints[f.name]):
            kwargs[f.name] = _build(hints[f.name], values, f"{prefix}{f.name}.")
        else:
            value = values[prefix + f.name]
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


def _flatten(data: dict, prefix: str, out: dict[str, Any], known_blocks: set[str], where: str) -> None:
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}: key {key!r} is not a string")
        name = prefix + key
        if isinstance(value, dict) and name in known_blocks:
            _flatten(value, name + ".", out, known_blocks, where)
        elif name in known_blocks:
            raise ConfigError(f"{where}: '{name}' must be a mapping of keys")
        else:
            out[name] = value


def yaml_problem(error: Exception) -> str:
    """`not valid YAML at line N: <problem>`: one line, whatever the parser raised."""
    mark = getattr(error, "problem_mark", None)
    at = f" at line {mark.line + 1}" if mark else ""
    return f"not valid YAML{at}: {getattr(error, 'problem', None) or 'cannot parse'}"


PATH_KEYS = {"cert_file", "key_file", "ca_file", "revoked_file"}


def _lift_role_section(data: dict, role: str, where: str) -> dict:
    """The seed's layout: `server:` (host, port) or `agent:` (proxy_port, server_ip, ...)
    as a section beside `metrics:` / `lifecycle:`; its keys count as top-level ones."""
    section = data.get(role)
    if not isinstance(section, dict):
        return data
    lifted = {k: v for k, v in data.items() if k != role}
    for key, value in section.items():
        if key in lifted:
            raise ConfigError(f"{where}: '{key}' is given both at the top level and under '{role}:'")
        lifted[key] = value
    return lifted


def default_agent_config() -> str | None:
    """Where users keep their agent's config: $FLUIDITY_CONFIG, else
    $XDG_CONFIG_HOME/fluidity/agent.yaml (~/.config/fluidity/agent.yaml) when it exists."""
    if os.environ.get("FLUIDITY_CONFIG"):
        return os.environ["FLUIDITY_CONFIG"]
    home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    candidate = os.path.join(home, "fluidity", "agent.yaml")
    return candidate if os.path.isfile(candidate) else None


def _read_mapping(path: str) -> dict:
    """The YAML file's top-level mapping; any way it cannot be one is a one-line error."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: {yaml_problem(e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return data


def _file_relative(value: Any, base: str) -> Any:
    """A path written in a config file is relative to that file, not to the working directory."""
    if not isinstance(value, str) or not value or value.startswith("env:"):
        return value
    if value.startswith("~"):
        return os.path.expanduser(value)
    return value if os.path.isabs(value) else os.path.join(base, value)


def _read_file(keys: Schema, path: str) -> dict[str, Any]:
    """The file's keys, dotted, each one the schema knows; paths made absolute."""
    raw: dict[str, Any] = {}
    blocks = {k.name.rsplit(".", 1)[0] for k in keys if "." in k.name}
    _flatten(_lift_role_section(_read_mapping(path), keys.role, path), "", raw, blocks, path)
    known = [k.name for k in keys]
    for name in raw:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{path}: unknown key {name!r}{hint}")
    base = os.path.dirname(os.path.abspath(path))
    return {name: _file_relative(value, base) if name in PATH_KEYS else value for name, value in raw.items()}


def load(keys: Schema[S], path: str | None, overrides: dict[str, Any] | None = None) -> S:
    """Defaults, then the YAML file, then command-line overrides, each value parsed by its
    key: the frozen ServerSettings (SERVER_KEYS) or AgentSettings (AGENT_KEYS), built once."""
    by_name = {k.name: k for k in keys}
    config: dict[str, Any] = {k.name: k.default for k in keys}
    where = path or "defaults"
    for origin, values in ((where, _read_file(keys, path) if path else {}), ("command line", overrides or {})):
        for name, value in values.items():
            key = by_name[name]
            refusal = key.secret(str(value)) if key.secret is not None and origin == "command line" else ""
            if refusal:
                raise ConfigError(f"{origin}: '{name}' (--{key.flag}): {refusal}")
            try:
                config[name] = key.parse(value)
            except ValueError as e:
                flag = f" (--{key.flag})" if origin == "command line" else ""
                raise ConfigError(f"{origin}: '{name}'{flag}: {e}") from None
    settings: S = _build(keys.settings, config, source=where)
    return settings


def read_pem(spec: str, what: str) -> bytes:
    """PEM bytes from a file path or from `env:VAR` (how Fargate passes SSM secrets)."""
    if spec.startswith("env:"):
        var = spec[4:]
        text = os.environ.get(var)
        if not text:
            raise ConfigError(f"{what}: environment variable {var} is not set or empty")
        data = text.encode()
        origin = f"environment variable {var}"
    else:
        try:
            with open(spec, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise ConfigError(f"{what}: no such file {spec} (run `fluidity certs init` to make a dev set)") from None
        except OSError as e:
            raise ConfigError(f"{what}: cannot read {spec}: {e.strerror}") from None
        origin = spec
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{what}: {origin} holds no PEM data")
    return data
