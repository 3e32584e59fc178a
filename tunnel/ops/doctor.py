"""`fluidity doctor`: check an agent's set-up end to end, one line a check, with the fix.

Each check says `ok`, `warn` or `FAIL`; the exit status is non-zero when any fails. The
checks go in the order a problem would show up: the config, the certificates, the server's
name and CA, a real TLS handshake with ALPN, the upstream proxy, then AWS and the control
plane when they are configured.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import ssl
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tunnel import config as cfg
from tunnel.redaction import redact
from tunnel.wire import patches
from tunnel.wire.addresses import is_loopback
from tunnel.wire.interception import intercepted_by, interception_message
from tunnel.wire.key_privacy import exposure

EXPIRY_WARNING_DAYS = 30


@dataclass
class Check:
    name: str
    state: str  # ok | warn | FAIL
    detail: str
    fix: str = ""

    def line(self) -> str:
        """What is printed: a URL's password or a key that any message quoted never is."""
        return redact(f"{self.state:<4}  {self.name}: {self.detail}" + (f"  -> {self.fix}" if self.fix else ""))


def _pem_file(spec: str) -> bytes:
    return cfg.read_pem(spec, spec)


def run(config_path: str | None, timeout: float = 10.0) -> list[Check]:
    checks: list[Check] = []
    try:
        config = cfg.load(cfg.AGENT_KEYS, config_path)
    except cfg.ConfigError as e:
        return [Check("config", "FAIL", str(e), "fix the file or the flag it names")]
    checks.append(Check("config", "ok", f"{config.source} is valid"))
    checks.append(_library_patches())

    material = _certificates(config, checks)
    if material is None:
        return checks
    cert_pem, key_pem, ca_pem = material
    choice = _proxy_choice(config, checks)
    if choice is None:
        return checks
    host, port, dns_name = _server_address(config, checks, timeout, choice)
    dial = _upstream(config, host, port, checks, timeout, choice, dns_name)
    if host and dial is not None:
        _handshake(config, host, port, cert_pem, key_pem, ca_pem, checks, timeout, dial)
    _aws(checks)
    return checks


def _library_patches() -> Check:
    """Which library patches the agent installs at start with these libraries (a refused one
    only costs speed: the library runs as shipped)."""
    if os.environ.get(patches.OFF_SWITCH) == "off":
        return Check("library patches", "ok", f"{patches.OFF_SWITCH}=off: every library runs as shipped")
    found = {patch.name: patch.unfit() for patch in patches.registry().patches() if patch.needed_here()}
    said = "; ".join(f"{name}: {'fits' if why is None else 'off (' + why + ')'}" for name, why in found.items())
    if all(why is None for why in found.values()):
        return Check("library patches", "ok", said)
    return Check("library patches", "warn", said, "an upgraded library: the agent runs it as shipped, a little slower")


def _certificates(config, checks: list[Check]):
    try:
        cert_pem, key_pem, ca_pem = (_pem_file(getattr(config, k)) for k in ("cert_file", "key_file", "ca_file"))
    except cfg.ConfigError as e:
        checks.append(Check("certificates", "FAIL", str(e), "run `fluidity certs init` or fix the path"))
        return None
    key_spec = config.key_file
    if not key_spec.startswith("env:"):
        exposed = exposure(key_spec)
        if exposed is not None:
            checks.append(Check("key permissions", "FAIL", exposed[0], exposed[1]))
        else:
            checks.append(Check("key permissions", "ok", f"{key_spec} is readable by its owner only"))
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as e:
        checks.append(
            Check(
                "certificates",
                "FAIL",
                f"cannot read the PEM files: {e}",
                "make them again with `fluidity certs client NAME`",
            )
        )
        return None
    same = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    checks.append(
        Check(
            "certificate and key",
            "ok" if same else "FAIL",
            "match" if same else f"{config.key_file} is not the key of {config.cert_file}",
            "" if same else "use the key issued with this certificate",
        )
    )
    try:
        cert.verify_directly_issued_by(ca)
        checks.append(Check("client certificate and CA", "ok", f"{config.cert_file} is issued by {config.ca_file}"))
    except (ValueError, TypeError, Exception) as e:  # InvalidSignature and friends
        checks.append(
            Check(
                "client certificate and CA",
                "FAIL",
                f"{config.cert_file} was not issued by {config.ca_file} ({type(e).__name__})",
                "use the CA that issued both the server's and your certificate",
            )
        )
    now = datetime.datetime.now(datetime.UTC)
    for what, c in (("client certificate", cert), ("CA certificate", ca)):
        left = (c.not_valid_after_utc - now).days
        if left < 0:
            checks.append(
                Check(
                    f"{what} expiry",
                    "FAIL",
                    f"expired on {c.not_valid_after_utc:%Y-%m-%d}",
                    "issue a new one (`fluidity certs client NAME`)",
                )
            )
        elif left < EXPIRY_WARNING_DAYS:
            checks.append(
                Check(
                    f"{what} expiry",
                    "warn",
                    f"expires in {left} days ({c.not_valid_after_utc:%Y-%m-%d})",
                    "issue a new one soon (`fluidity certs client NAME`)",
                )
            )
        else:
            checks.append(Check(f"{what} expiry", "ok", f"valid until {c.not_valid_after_utc:%Y-%m-%d}"))
    if not same:
        return None
    return cert_pem, key_pem, ca_pem


def _proxy_choice(config, checks: list[Check]):
    """The agent's proxy policy; for `auto`, the PAC file looked for now, as the agent would."""
    from tunnel.agent.proxy_choice import ProxyChoice, discover
    from tunnel.agent.proxy_credentials import CredentialsError, from_settings

    try:
        credentials = from_settings(config)
    except CredentialsError as e:
        checks.append(
            Check("upstream proxy", "FAIL", str(e), "set upstream_proxy_password to env:VAR, keyring, or the password")
        )
        return None
    try:
        choice = ProxyChoice(
            config.upstream_proxy,
            config.pac_url,
            config.upstream_proxy_ca,
            credentials=credentials,
            auth_allow=config.upstream_proxy_auth_allow,
        )
    except Exception as e:  # an unreadable upstream_proxy_ca, or pyOpenSSL's error for bad PEM
        checks.append(
            Check(
                "upstream proxy", "FAIL", f"upstream_proxy_ca: {e}", "point upstream_proxy_ca at the proxy's CA (PEM)"
            )
        )
        return None
    if choice.auto:
        try:
            choice.found = discover(config.pac_url)
        except Exception as e:  # a PAC file that does not parse, a broken setting
            checks.append(
                Check(
                    "proxy discovery",
                    "FAIL",
                    f"upstream_proxy auto: {e}",
                    "check pac_url / the system's proxy settings",
                )
            )
            return None
        if choice.found is None:
            checks.append(
                Check(
                    "proxy discovery",
                    "warn",
                    f"upstream_proxy auto found no PAC file "
                    f"({'at pac_url' if config.pac_url else 'none in the system settings, none by WPAD'}): "
                    f"$HTTPS_PROXY or direct",
                    "",
                )
            )
        else:
            checks.append(Check("proxy discovery", "ok", f"upstream_proxy auto uses {choice.found.where}"))
    return choice


def _server_address(config, checks: list[Check], timeout: float, choice) -> tuple[str, int, str]:
    """(address, port, public DNS name or "")."""
    port = config.server_port
    if config.server_ip:
        return config.server_ip, port, ""
    status_url = config.lifecycle.status_endpoint or (
        config.lifecycle.wake_endpoint.rsplit("/", 1)[0] + "/status" if config.lifecycle.wake_endpoint else ""
    )
    if not status_url:
        checks.append(
            Check(
                "server address",
                "FAIL",
                "no server_ip and no lifecycle block",
                "set server_ip, or the control plane's URLs and API key",
            )
        )
        return "", port, ""
    status = _status(config, status_url, checks, timeout, choice)
    if status and status.get("publicIp"):
        name = status.get("publicDnsName")
        if isinstance(name, str) and name:
            checks.append(
                Check(
                    "server address",
                    "ok",
                    f"{status['publicIp']}, public DNS name {name} (what a proxy is asked to CONNECT to)",
                )
            )
            return status["publicIp"], int(status.get("port") or port), name
        return status["publicIp"], int(status.get("port") or port), ""
    checks.append(
        Check(
            "server address",
            "warn",
            f"the server is {status.get('status', 'unknown') if status else 'unknown'}: nothing to shake hands with",
            "start it: `fluidity start`, or start the agent (it wakes the server)",
        )
    )
    return "", port, ""


def _status(config, url: str, checks: list[Check], timeout: float, choice) -> dict | None:
    from tunnel.agent.lifecycle import api_key_of
    from tunnel.secret_source import FORMS, SecretUnavailable

    try:
        key = api_key_of(config)
    except SecretUnavailable as e:
        checks.append(Check("control plane", "FAIL", str(e), f"give lifecycle.api_key as {FORMS}, or the key"))
        return None
    request = urllib.request.Request(url, headers={"x-api-key": key, "Accept": "application/json"})
    try:
        via = _status_proxy(url, choice)
    except ValueError as e:
        checks.append(Check("upstream proxy", "FAIL", str(e), "fix upstream_proxy or $HTTPS_PROXY"))
        return None
    except _NestedTLS as e:
        checks.append(
            Check(
                "control plane",
                "warn",
                f"not asked: doctor cannot reach {redact(url)} through the https:// proxy {e} (the agent can)",
                "",
            )
        )
        return None
    return _ask_status(request, url, via, checks, timeout)


class _NestedTLS(Exception):
    """The proxy is https://: doctor's ssl module cannot carry TLS inside it."""


def _status_proxy(url: str, choice) -> str | None:
    """The agent's own route for this host as a urllib proxy URL: its proxy choice (configured,
    auto, $HTTPS_PROXY), except for this machine, which is always dialled directly."""
    from urllib.parse import quote, urlsplit

    parts = urlsplit(url)
    if is_loopback(parts.hostname or ""):
        return None
    proxy = choice.choose(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))[0]
    if proxy is None:
        return None
    if proxy.tls:
        raise _NestedTLS(proxy.display)
    user = f"{quote(proxy.username, safe='')}:{quote(proxy.password, safe='')}@" if proxy.username else ""
    return f"http://{user}{proxy.host}:{proxy.port}"


def _ask_status(request, url: str, via: str | None, checks: list[Check], timeout: float) -> dict | None:
    handlers = [urllib.request.ProxyHandler({"http": via, "https": via} if via else {})]
    try:
        with urllib.request.build_opener(*handlers).open(request, timeout=timeout) as answer:
            status = json.load(answer)
    except urllib.error.HTTPError as e:
        fix = (
            "check lifecycle.api_key (`pulumi stack output apiKey --show-secrets`)"
            if e.code == 403
            else "see the control plane's logs"
        )
        checks.append(Check("control plane", "FAIL", f"{redact(url)} answered {e.code}", fix))
        return None
    except (OSError, ValueError) as e:
        checks.append(
            Check(
                "control plane",
                "FAIL",
                f"cannot reach {redact(url)}: {redact(str(getattr(e, 'reason', e)))}",
                "check the URL (`pulumi stack output statusUrl`) and your network",
            )
        )
        return None
    checks.append(Check("control plane", "ok", f"{redact(url)} answers: the server is {status.get('status', '?')}"))
    return status


def _handshake(
    config,
    host: str,
    port: int,
    cert_pem: bytes,
    key_pem: bytes,
    ca_pem: bytes,
    checks: list[Check],
    timeout: float,
    dial: Dial,
) -> None:
    """The agent's real handshake (TLS 1.3, client certificate, h2), over `dial()`: direct,
    or through the proxy. A certificate our CA did not issue is named as interception."""
    import tempfile

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cadata=ca_pem.decode())
    context.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory() as folder:  # ssl loads a client key only from files
        cert_path, key_path = os.path.join(folder, "c.pem"), os.path.join(folder, "c.key")
        with open(cert_path, "wb") as f:
            f.write(cert_pem)
        with open(os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(key_pem)
        context.load_cert_chain(cert_path, key_path)
    where = f"{host}:{port}" + (f" (through {dial.via})" if dial.via else "")
    try:
        with dial() as raw, context.wrap_socket(raw, server_hostname=config.server_name) as tls:
            tls.settimeout(timeout)
            try:
                tls.recv(1)  # TLS 1.3: a refused client certificate shows up on the first read
            except TimeoutError:
                pass
            alpn = tls.selected_alpn_protocol()
    except ssl.SSLCertVerificationError as e:
        issuer = _presented_issuer(dial, config.server_name, ca_pem, timeout)
        if issuer is not None:
            checks.append(
                Check(
                    "TLS interception",
                    "FAIL",
                    interception_message(issuer, f"{host}:{port}", dial.via),
                    f"ask for a TLS-inspection bypass for {host}:{port}",
                )
            )
            return
        checks.append(
            Check(
                "server name and CA",
                "FAIL",
                f"{where}: {e.verify_message}",
                f"server_name must be a name in the server's certificate ({config.server_name!r}), and ca_file the CA "
                f"that issued it",
            )
        )
        return
    except (ssl.SSLError, OSError) as e:
        reason = getattr(e, "reason", None) or e.__class__.__name__
        text = str(reason).upper()
        if "WRONG_VERSION_NUMBER" in text or "RECORD_LAYER_FAILURE" in text or "PACKET_LENGTH_TOO_LONG" in text:
            hint = (
                "something answers on this port, but not with TLS (a plain HTTP port, or another service): is "
                "server_port the Fluidity server's?"
            )
        elif "CERTIFICATE" in text or "ALERT" in text:
            hint = "the server refused this client certificate (another CA, or revoked)"
        else:
            hint = str(e)
        checks.append(
            Check(
                "TLS handshake",
                "FAIL",
                f"{where}: {hint}",
                "check server_ip/server_port, that the server runs, and that it trusts your CA",
            )
        )
        return
    checks.append(Check("server name and CA", "ok", f"{where} proved it is {config.server_name!r}, issued by your CA"))
    state = "ok" if alpn == "h2" else "FAIL"
    checks.append(
        Check(
            "TLS handshake",
            state,
            f"{where}: TLS 1.3, client certificate accepted, ALPN {alpn or 'none'}",
            "" if alpn == "h2" else "the server must offer h2",
        )
    )


def _presented_issuer(dial, server_name: str, ca_pem: bytes, timeout: float) -> str | None:
    """Who issued what the server's address presents, when our CA did not: a second
    handshake that only looks (no client certificate, nothing sent after it)."""
    look = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    look.check_hostname, look.verify_mode = False, ssl.CERT_NONE
    try:
        with dial() as raw, look.wrap_socket(raw, server_hostname=server_name) as tls:
            presented = tls.getpeercert(binary_form=True)
    except (ssl.SSLError, OSError):
        return None
    if not presented:
        return None
    return intercepted_by([x509.load_der_x509_certificate(presented)], x509.load_pem_x509_certificate(ca_pem))


@dataclass(frozen=True)
class Dial:
    """How the handshake check opens its connection to the server; `via` names the proxy."""

    open: Callable[[], socket.socket]
    via: str = ""

    def __call__(self) -> socket.socket:
        return self.open()


def _upstream(
    config, host: str, port: int, checks: list[Check], timeout: float, choice, dns_name: str = ""
) -> Dial | None:
    """Checks the proxy the agent would use; returns how to open a connection to the server
    (direct, or a CONNECT through that proxy), or None when the proxy refuses."""
    try:
        proxy, why = choice.choose(dns_name or host or config.server_ip, port)
    except ValueError as e:
        checks.append(Check("upstream proxy", "FAIL", str(e), "fix upstream_proxy or $HTTPS_PROXY"))
        return None
    if proxy is None:
        if choice.auto and host:
            checks.append(Check("upstream proxy", "ok", f"none for {host}: {why}"))
        return Dial(lambda: socket.create_connection((host, port), timeout=timeout))
    why = why.removeprefix("from ")
    tried = _try_connect(config, proxy, why, host, port, dns_name, checks, timeout)
    if tried is None:
        return None
    target, status, head, auth = tried
    if not target:
        checks.append(Check("upstream proxy", "ok", f"{proxy.display} (from {why}) accepts connections"))
        return None
    if not _report_connect(proxy, why, target, port, status, head, auth, checks):
        return None
    if proxy.tls:
        checks.append(
            Check(
                "TLS handshake",
                "warn",
                f"not tried inside the https:// proxy {proxy.display} (the agent does it; doctor's ssl module cannot "
                f"nest TLS)",
                "",
            )
        )
        return None
    return _dial_through(config, proxy, target, timeout)


def _try_connect(
    config, proxy, why: str, host: str, port: int, dns_name: str, checks: list[Check], timeout: float
) -> tuple[str, int | None, str, object] | None:
    """CONNECT to the server through the proxy, by name first and then by address as the agent
    does; (target, status, status line, authenticator), or None after a FAIL for an unreachable
    or refusing proxy."""
    from tunnel.agent.proxy_auth import ProxyAuthenticator, ProxyAuthError

    target = f"{dns_name or host}:{port}" if host else ""  # by name where the server has one, as the agent asks
    auth = ProxyAuthenticator.for_proxy(proxy)
    try:
        status, head = _connect_through(proxy, target, auth, timeout, ca=config.upstream_proxy_ca)
        if dns_name and not _is_2xx(status):  # as the agent does: then the address
            checks.append(
                Check(
                    "upstream proxy",
                    "warn",
                    f"{proxy.display} answered {head!r} to CONNECT {target}; trying the address",
                )
            )
            target = f"{host}:{port}"
            auth = ProxyAuthenticator.for_proxy(proxy)
            status, head = _connect_through(proxy, target, auth, timeout, ca=config.upstream_proxy_ca)
    except ProxyAuthError as e:
        checks.append(
            Check(
                "upstream proxy",
                "FAIL",
                f"{proxy.display} (from {why}): {e}",
                "if it is your network's proxy, add it to upstream_proxy_auth_allow"
                if proxy.credentials_withheld
                else "check the proxy's user name and password in upstream_proxy",
            )
        )
        return None
    except OSError as e:
        checks.append(
            Check(
                "upstream proxy",
                "FAIL",
                f"cannot reach {proxy.display} (from {why}): {e}",
                "check upstream_proxy / $HTTPS_PROXY",
            )
        )
        return None
    return target, status, head, auth


def _is_2xx(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


def _report_connect(
    proxy, why: str, target: str, port: int, status: int | None, head: str, auth, checks: list[Check]
) -> bool:
    """The proxy's answer to CONNECT as a check (with the scheme it authenticated with, or a
    hint for the refused port); whether it let the connection through."""
    from tunnel.agent.upstream import port_hint

    ok = _is_2xx(status)
    how = (
        f", authenticated with {auth.scheme.upper() if auth.scheme == 'ntlm' else auth.scheme.capitalize()}"
        if ok and auth.scheme
        else ""
    )
    fix = "" if ok else "check that the proxy allows CONNECT to this port"
    checks.append(
        Check(
            "upstream proxy",
            "ok" if ok else "FAIL",
            f"{proxy.display} (from {why}) answered {head!r} to CONNECT {target}{how}"
            + ("" if ok else port_hint(status, port)),
            fix,
        )
    )
    return ok


def _dial_through(config, proxy, target: str, timeout: float) -> Dial:
    """How the later checks open a connection to the server: a fresh CONNECT through the proxy each time."""
    from tunnel.agent.proxy_auth import ProxyAuthenticator

    def through_proxy() -> socket.socket:
        kept: list = []
        _, head = _connect_through(
            proxy,
            target,
            ProxyAuthenticator.for_proxy(proxy),
            timeout,
            kept,
            config.upstream_proxy_ca,
        )
        if not kept:
            raise OSError(f"{proxy.display} answered {head!r} to CONNECT {target}")
        return kept[0]

    return Dial(through_proxy, via=proxy.display)


def _proxy_socket(proxy, timeout: float, ca: str = "") -> socket.socket:
    """A connection to the proxy; TLS to it for an https:// proxy (its name checked)."""
    sock = socket.create_connection((proxy.host, proxy.port), timeout=timeout)
    if not proxy.tls:
        return sock
    context = ssl.create_default_context(cafile=ca or None)
    try:
        return context.wrap_socket(sock, server_hostname=proxy.host)
    except BaseException:
        sock.close()
        raise


def _connect_through(
    proxy, target: str, auth, timeout: float, keep: list | None = None, ca: str = ""
) -> tuple[int | None, str]:
    """CONNECT as the agent does: challenge-driven authentication, on one connection while
    the proxy keeps it. Returns the final status and status line; after a 2xx the open
    connection is appended to `keep` when one is given (the caller closes it)."""
    from tunnel.agent.proxy_auth import MAX_ROUNDS

    header = None
    for _ in range(MAX_ROUNDS + 1):
        with _proxy_socket(proxy, timeout, ca) as sock:
            if not target:
                return None, ""
            outcome = _connect_rounds(sock, proxy, target, auth, header, keep)
            if not isinstance(outcome, _NewConnection):
                return outcome
            header = outcome.header
    return None, "no answer after authentication"


class _NewConnection:
    """The proxy closed after a challenge: answer it (`header`) on a new connection."""

    def __init__(self, header: str | None) -> None:
        self.header = header


def _connect_rounds(
    sock: socket.socket, proxy, target: str, auth, header: str | None, keep: list | None
) -> tuple[int | None, str] | _NewConnection:
    """CONNECT on one connection, answering challenges while the proxy keeps it open."""
    import h11

    conn = h11.Connection(h11.CLIENT)
    while True:
        headers = [(b"host", target.encode())] + ([(b"proxy-authorization", header.encode())] if header else [])
        sock.sendall(
            conn.send(h11.Request(method=b"CONNECT", target=target.encode(), headers=headers))
            + conn.send(h11.EndOfMessage())
        )
        response = _read_answer(conn, sock)
        if isinstance(response, str):
            return None, response
        line = f"HTTP/1.1 {response.status_code} {response.reason.decode('latin-1')}"
        if _is_2xx(response.status_code):
            if keep is not None and not proxy.tls:  # TLS in TLS: not with the ssl module
                keep.append(sock.dup())
            return response.status_code, line
        challenges = [v.decode("latin-1") for n, v in response.headers if n == b"proxy-authenticate"]
        if response.status_code not in (401, 407) or not challenges:
            return response.status_code, line
        header = auth.answer(challenges, "CONNECT", target)
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            continue
        auth.restart()
        if auth.scheme is None:
            header = auth.answer(challenges, "CONNECT", target)
        return _NewConnection(header)


def _read_answer(conn, sock: socket.socket):
    """The proxy's response to CONNECT (returned at once for a 2xx, whose body is the tunnel;
    otherwise after its body), or why there is none."""
    import h11

    response, event = None, None
    while not isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as e:  # closed mid-answer, or not HTTP at all
            return f"no HTTP answer ({e})"
        if event is h11.NEED_DATA:
            conn.receive_data(sock.recv(65536))
        elif isinstance(event, h11.Response):
            response = event
            if _is_2xx(event.status_code):
                return response
    if response is None:
        return "no HTTP answer (the connection closed)"
    return response


def _aws(checks: list[Check]) -> None:
    """Only when AWS is in reach of this machine's set-up (a profile, keys or a region)."""
    if not any(
        os.environ.get(v) for v in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_REGION", "AWS_DEFAULT_REGION")
    ) and not os.path.exists(os.path.expanduser("~/.aws")):
        return
    try:
        import boto3
    except ImportError:
        checks.append(
            Check(
                "AWS",
                "warn",
                "boto3 is not installed: fluidity start/stop/status cannot run",
                "pip install boto3, or pipx inject fluidity boto3",
            )
        )
        return
    session = boto3.session.Session(region_name=os.environ.get("AWS_REGION") or None)
    region = session.region_name
    checks.append(
        Check(
            "AWS region",
            "ok" if region else "FAIL",
            region or "none set",
            "" if region else "set AWS_REGION or pass --region",
        )
    )
    credentials = session.get_credentials()
    checks.append(
        Check(
            "AWS credentials",
            "ok" if credentials else "FAIL",
            f"found ({credentials.method})" if credentials else "none found",
            "" if credentials else "aws configure, or AWS_PROFILE",
        )
    )


def main(config_path: str | None) -> int:
    checks = run(config_path or cfg.default_agent_config())
    for check in checks:
        print(check.line())
    failed = [c for c in checks if c.state == "FAIL"]
    print(f"\n{len(failed)} problem(s) found." if failed else "\nall good.")
    return 1 if failed else 0
