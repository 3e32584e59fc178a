"""The agent's proxy port with real curl: CONNECT, absolute-form, keep-alive, errors, /health."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest
from support import curl, free_port, proxy_connect, read_head

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)


def test_connect_to_https_origin_with_its_own_ca(tunnel, https_origin):
    result = curl("-x", tunnel.proxy, "--cacert", https_origin.ca, f"https://127.0.0.1:{https_origin.port}/hi")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"hello from https-origin /hi")


def test_absolute_form_http_request(tunnel, http_origin):
    result = curl("-x", tunnel.proxy, f"http://127.0.0.1:{http_origin.port}/plain?q=1")
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout
        == f"hello from http-origin /plain?q=1 host=127.0.0.1:{http_origin.port} proxy-conn=None\n".encode()
    )


def test_two_hosts_on_one_keepalive_client_connection(tunnel, http_origin, second_origin):
    urls = [
        f"http://127.0.0.1:{http_origin.port}/a",
        f"http://127.0.0.1:{second_origin.port}/b",
        f"http://127.0.0.1:{http_origin.port}/c",
    ]
    result = curl("-v", "-x", tunnel.proxy, *urls)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(b"hello from") == 3
    assert b"hello from http-origin /a" in result.stdout
    assert b"hello from second-origin /b" in result.stdout
    assert b"hello from http-origin /c" in result.stdout
    # curl says "Re-using existing connection" when the client connection stayed open.
    assert (
        result.stderr.count(b"Re-using existing connection") + result.stderr.count(b"Reusing existing connection") >= 2
    ), result.stderr


def test_close_delimited_response_is_reframed_for_keepalive(tunnel, http_origin):
    url = f"http://127.0.0.1:{http_origin.port}/close-delimited"
    result = curl("-v", "-x", tunnel.proxy, url, f"http://127.0.0.1:{http_origin.port}/after")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"ended by close\nhello from http-origin /after")


def test_post_body_reaches_origin_intact(tunnel, http_origin, tmp_path):
    body = tmp_path / "body.bin"
    body.write_bytes(bytes(range(256)) * 4000)
    import hashlib

    expected = f"{256 * 4000} {hashlib.sha256(body.read_bytes()).hexdigest()}\n".encode()
    for extra in ([], ["-H", "Transfer-Encoding: chunked"]):
        result = curl(
            "-x", tunnel.proxy, "--data-binary", f"@{body}", *extra, f"http://127.0.0.1:{http_origin.port}/upload"
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == expected


def test_health_endpoint(tunnel):
    with urllib.request.urlopen(f"http://127.0.0.1:{tunnel.agent.port}/health", timeout=5) as r:
        assert r.headers["Content-Type"] == "application/json"
        health = json.load(r)
    assert health["connected"] is True
    assert health["server"] == f"127.0.0.1:{tunnel.server.port}"
    assert health["uptime"] > 0
    assert isinstance(health["open_streams"], int)


def test_health_counts_open_streams(tunnel, echo):
    sock, head = proxy_connect(tunnel.agent.port, f"127.0.0.1:{echo.port}")
    try:
        assert head.startswith(b"HTTP/1.1 200")
        with urllib.request.urlopen(f"http://127.0.0.1:{tunnel.agent.port}/health", timeout=5) as r:
            assert json.load(r)["open_streams"] >= 1
    finally:
        sock.close()


def test_egress_refusal_passes_through_as_403(tunnel):
    result = curl("-x", tunnel.proxy, "-w", "%{http_code}", "http://10.1.2.3/")
    assert result.stdout.endswith(b"403")
    assert b"10.1.2.3 is private" in result.stdout


def test_connect_refusal_is_403_with_reason(tunnel):
    sock, head = proxy_connect(tunnel.agent.port, "169.254.169.254:80")
    sock.close()
    assert head.startswith(b"HTTP/1.1 403"), head
    assert b"instance metadata" in head


def test_dial_failure_is_502_with_reason(tunnel):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sock, head = proxy_connect(tunnel.agent.port, f"127.0.0.1:{port}")
    sock.close()
    assert head.startswith(b"HTTP/1.1 502"), head
    assert b"refused" in head


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def test_malformed_request_is_400(tunnel):
    assert _raw(tunnel.agent.port, b"THIS IS NOT HTTP\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert _raw(tunnel.agent.port, b"CONNECT no-port-here HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert _raw(tunnel.agent.port, b"GET ftp://example.com/ HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 400")


def test_oversized_headers_are_431(tunnel):
    answer = _raw(
        tunnel.agent.port,
        b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]


def test_agent_survives_bad_input_and_keeps_serving(tunnel, http_origin):
    for junk in (b"\x00\xff" * 1000, b"GET / HTTP/1.1\r\nContent-Length: -5\r\n\r\n", b"\r\n\r\n\r\n"):
        _raw(tunnel.agent.port, junk)
    result = curl("-x", tunnel.proxy, f"http://127.0.0.1:{http_origin.port}/still-alive")
    assert result.stdout.startswith(b"hello from http-origin /still-alive")


def raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        return read_head(sock)


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/health"),
        ("GET", "/proxy.pac"),
        ("GET", "/anything"),
        ("GET", "/"),
        ("GET", "/status.json"),
        ("POST", "/server/stop"),
        ("POST", "/server/wake"),
    ],
)
@pytest.mark.parametrize(
    "host", ["evil.example:{port}", "evil.example", "127.0.0.1.nip.io:{port}", "localhost.evil.example", "", None]
)
def test_own_endpoints_refuse_a_foreign_host(tunnel, method, path, host):
    """DNS rebinding: a page whose name now resolves to 127.0.0.1 still sends its own name."""
    port = tunnel.agent.port
    header = "" if host is None else f"Host: {host.format(port=port)}\r\n"
    version = "1.0" if host is None else "1.1"
    body = "Content-Length: 11\r\n\r\ntoken=guess" if method == "POST" else "\r\n"
    answer = raw_request(port, f"{method} {path} HTTP/{version}\r\n{header}Connection: close\r\n{body}".encode())
    assert answer.startswith(b"HTTP/1.1 403 "), answer
    assert b"identity" not in answer and b"FindProxyForURL" not in answer and b"token" not in answer


@pytest.mark.parametrize(
    "host", ["127.0.0.1:{port}", "127.0.0.1", "localhost:{port}", "LOCALHOST", "localhost.", "[::1]:{port}", "[::1]"]
)
def test_own_endpoints_answer_loopback_hosts(tunnel, host):
    port = tunnel.agent.port
    for path in ("/health", "/proxy.pac", "/", "/status.json"):
        answer = raw_request(
            port, f"GET {path} HTTP/1.1\r\nHost: {host.format(port=port)}\r\nConnection: close\r\n\r\n".encode()
        )
        assert answer.startswith(b"HTTP/1.1 200 "), (path, answer)


def test_absolute_form_request_carries_the_urls_host(tunnel, http_origin):
    """RFC 9112 §3.2.2: a proxy replaces Host with the authority of the request target."""
    url = f"http://127.0.0.1:{http_origin.port}/which-host"
    result = curl("-x", tunnel.proxy, "-H", "Host: other.example", url)
    assert result.returncode == 0, result.stderr
    assert f"host=127.0.0.1:{http_origin.port} ".encode() in result.stdout, result.stdout
    answer = raw_request(
        tunnel.agent.port,
        f"GET {url} HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 "), answer


@pytest.mark.parametrize("path, status", [("/health", b"200 OK"), ("/nothing-here", b"400 Bad Request")])
def test_the_agents_own_answers_carry_reason_phrases(tunnel, path, status):
    answer = raw_request(
        tunnel.agent.port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 " + status + b"\r\n"), answer[:60]
    refused = raw_request(tunnel.agent.port, b"GET /health HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
    assert refused.startswith(b"HTTP/1.1 403 Forbidden\r\n"), refused[:60]


# -- a hostile origin (issue 24, item 3): one bad response costs one stream, never the tunnel --

HOSTILE = {
    # RFC 9112 §6.1: Transfer-Encoding overrides Content-Length, whatever the latter says.
    "chunked and a longer Content-Length": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "200 hello",
    ),
    "chunked and a shorter Content-Length": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "200 hello",
    ),
    "101 nobody asked for": (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nraw",
        "502",
    ),
    "two Content-Lengths": (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", "502"),
    "not HTTP at all": (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "502"),
    "a broken chunk after the head": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
        "cut",
    ),
    "a body longer than it said, then more": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhello HTTP/1.1 999 \x00\r\n\r\n",
        "200 he",
    ),
}


class HostileOrigin:
    """Answers every request head with the same canned bytes, then holds the connection a moment."""

    def __init__(self, answer: bytes) -> None:
        import threading

        self.answer = answer
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading
        import time

        def one(conn: socket.socket) -> None:
            with conn:
                conn.settimeout(10)
                try:
                    read_head(conn)
                    conn.sendall(self.answer)
                    time.sleep(1.0)
                except OSError:
                    pass

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=one, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self.sock.close()


def _dechunk(body: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out
        out, body = out + body[:size], body[size + 2 :]


def _http_get(proxy_port: int, port: int) -> str:
    """What a client sees: 'STATUS body' for a framed answer, or 'cut' when it is reset."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    with sock:
        sock.sendall(f"GET http://127.0.0.1:{port}/x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        data = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                head, _, rest = data.partition(b"\r\n\r\n")
                if b"content-length: " in head.lower():
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    if len(rest) >= length:
                        return f"{head.split()[1].decode()} {rest[:length].decode()}"
                elif b"transfer-encoding: chunked" in head.lower() and rest.endswith(b"0\r\n\r\n"):
                    return f"{head.split()[1].decode()} {_dechunk(rest).decode()}"
        except ConnectionResetError:
            return "cut"
        return f"eof after {data[:60]!r}"


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_origin_costs_one_stream_never_the_tunnel(pair, echo, case):
    import time

    server, agent = pair
    answer, expected = HOSTILE[case]
    origin = HostileOrigin(answer)
    bystander, head = proxy_connect(agent.port, f"127.0.0.1:{echo.port}")  # another client's stream
    try:
        assert head.startswith(b"HTTP/1.1 200")
        uptime = json.load(urllib.request.urlopen(f"http://127.0.0.1:{agent.port}/health", timeout=5))["tunnel_uptime"]
        seen = _http_get(agent.port, origin.port)
        assert seen.split(" ", 1)[0] == expected if expected == "502" else seen == expected
        bystander.sendall(b"still carried")
        got = b""
        while len(got) < 13:
            got += bystander.recv(64)
        assert got == b"still carried"
        time.sleep(0.2)
        health = json.load(urllib.request.urlopen(f"http://127.0.0.1:{agent.port}/health", timeout=5))
        assert health["connected"] and health["tunnel_uptime"] > uptime  # the same tunnel connection
        assert server.log().count("connected (h2)") == 1
    finally:
        bystander.close()
        origin.close()
    agent.assert_no_unhandled_errors()


@pytest.mark.parametrize(
    "framing", [b"Content-Length: 5\r\n\r\nhello", b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"]
)
def test_a_connect_with_content_is_400(tunnel, echo, framing):
    """RFC 9110 §9.3.6 (issue 24, item 6): nothing is swallowed, nothing is relayed."""
    before = echo.connections
    sock = socket.create_connection(("127.0.0.1", tunnel.agent.port), timeout=10)
    with sock:
        sock.sendall(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\nHost: 127.0.0.1:{echo.port}\r\n".encode() + framing)
        head = read_head(sock)
    assert head.startswith(b"HTTP/1.1 400"), head
    assert b"no content" in head
    assert echo.connections == before


# -- both loopback families (issue 26, item 3) ---------------------------------------------


@pytest.mark.parametrize("host", ["[::1]", "127.0.0.1", "localhost"])
def test_the_proxy_answers_on_ipv4_and_ipv6_loopback(tunnel, http_origin, host):
    """`localhost` is ::1 first on many systems: by default the agent listens on both."""
    port = tunnel.agent.port
    http = curl("-x", f"http://{host}:{port}", f"http://127.0.0.1:{http_origin.port}/v6")
    assert http.returncode == 0 and b"hello from http-origin /v6" in http.stdout, http
    socks = curl("--socks5-hostname", f"{host}:{port}", f"http://127.0.0.1:{http_origin.port}/socks")
    assert socks.returncode == 0 and b"hello from http-origin /socks" in socks.stdout, socks
    tunnelled = curl("-p", "-x", f"http://{host}:{port}", f"http://127.0.0.1:{http_origin.port}/connect")
    assert tunnelled.returncode == 0 and b"hello from http-origin /connect" in tunnelled.stdout, tunnelled


def test_health_and_pac_on_ipv6_loopback_point_at_the_address_used(tunnel):
    port = tunnel.agent.port
    health = curl(f"http://[::1]:{port}/health")
    assert health.returncode == 0 and json.loads(health.stdout)["connected"], health
    assert f"PROXY [::1]:{port}".encode() in curl(f"http://[::1]:{port}/proxy.pac").stdout
    assert f"PROXY 127.0.0.1:{port}".encode() in curl(f"http://127.0.0.1:{port}/proxy.pac").stdout
    foreign = curl("-H", "Host: evil.example", f"http://[::1]:{port}/health", "-o", "/dev/null", "-w", "%{http_code}")
    assert foreign.stdout == b"403", foreign  # the Host rule holds on ::1 too


def test_proxy_host_narrows_it_to_one_address(certs, tunnel, tmp_path, http_origin):
    from support import agent_config, start_twistd

    agent = start_twistd(
        "agent", agent_config(certs, tunnel.server.port, proxy_host="127.0.0.1"), tmp_path, name="v4-only"
    )
    try:
        assert curl("-x", f"http://127.0.0.1:{agent.port}", f"http://127.0.0.1:{http_origin.port}/").returncode == 0
        refused = curl("-x", f"http://[::1]:{agent.port}", f"http://127.0.0.1:{http_origin.port}/")
        assert refused.returncode == 7, refused  # curl: could not connect
    finally:
        agent.stop()


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"proxy_host": "localhost"}, "'localhost' is not an IP address"),
        ({"proxy_host": []}, "expected at least one address"),
        (
            {"proxy_host": ["127.0.0.1", "::1"], "proxy_port": 0},
            "'proxy_port: 0' (any free port) needs a single proxy_host",
        ),
    ],
)
def test_bad_proxy_hosts_are_one_line(certs, tmp_path, settings, message):
    import subprocess

    import yaml
    from support import TWISTD, agent_config

    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(agent_config(certs, 1, **settings)))
    done = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "fluidity-agent", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        done.returncode != 0 and message in done.stdout + done.stderr and "Traceback" not in done.stdout + done.stderr
    ), done


# -- the agent's own pages: HEAD, and never framed (issue 39, item 4) --

OWN_PAGES = [
    ("/", "127.0.0.1", b"200 OK"),
    ("/health", "127.0.0.1", b"200 OK"),
    ("/status.json", "127.0.0.1", b"200 OK"),
    ("/proxy.pac", "localhost", b"200 OK"),
    ("/nothing-here", "127.0.0.1", b"400 Bad Request"),
    ("/", "evil.example", b"403 Forbidden"),
]


def framing_headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return {k.strip().lower(): v.strip() for k, v in fields.items()}


@pytest.mark.parametrize("path, host, status", OWN_PAGES)
def test_head_on_every_own_page_is_a_head_without_a_body_and_no_traceback(tunnel, path, host, status):
    """Any web page can send HEAD to the agent: the answer is the GET's head alone (the next
    answer on the connection follows it at once), and the log gets no traceback."""
    logged = len(tunnel.agent.log())
    with socket.create_connection(("127.0.0.1", tunnel.agent.port), timeout=10) as sock:
        sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = read_head(sock)
        assert head.startswith(b"HTTP/1.1 " + status + b"\r\n"), head
        assert head.endswith(b"\r\n\r\n") and int(framing_headers(head)["content-length"]) > 0, head
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        rest = b""
        while data := sock.recv(65536):
            rest += data
    assert head.split(b"\r\n\r\n", 1)[1] == b"" and rest.startswith(b"HTTP/1.1 200 OK\r\n"), (head, rest[:200])
    assert b'"connected"' in rest
    later = tunnel.agent.log()[logged:]
    assert "Traceback" not in later and "Unhandled" not in later, later[-3000:]


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
@pytest.mark.parametrize("path, host, status", OWN_PAGES)
def test_every_own_page_refuses_to_be_framed(tunnel, method, path, host, status):
    body = "Content-Length: 11\r\n\r\ntoken=guess" if method == "POST" else "\r\n"
    answer = raw_request(
        tunnel.agent.port, f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{body}".encode()
    )
    headers = framing_headers(answer)
    assert headers.get("x-frame-options") == "DENY", answer
    assert headers.get("content-security-policy") == "frame-ancestors 'none'", answer


def test_a_refusal_to_a_head_has_no_body(tunnel):
    """The shared one-line refusals (here a 502 for a port nothing listens on) carry the
    same headers, and to a HEAD no body."""
    port = free_port()
    with socket.create_connection(("127.0.0.1", tunnel.agent.port), timeout=10) as sock:
        sock.sendall(f"HEAD http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        answer = b""
        while data := sock.recv(65536):
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 ") and body == b"", answer
    assert framing_headers(head + b"\r\n\r\n").get("x-frame-options") == "DENY", answer
