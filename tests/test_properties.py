"""Property-based tests (hypothesis) for every parser that takes input from outside:
config files, the HTTP/1.1 front, SOCKS5, the egress rules, Lambda events and the
revocation list. Each either accepts or refuses with its own clear error; nothing else."""

from __future__ import annotations

import json

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from deployment.ingress import source_ipv4
from lambdas.api import BadEvent, body_of, method_of, respond
from tunnel.agent import socks
from tunnel.agent.http_front import ProxyFront, ProxySite
from tunnel.config import AGENT_KEYS, SERVER_KEYS, ConfigError, load
from tunnel.server.egress import parse_allow_rule
from tunnel.server.revocation import RevocationError, parse
from tunnel.wire.refusals import OpenFailed

SETTINGS = settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


# -- config files ----------------------------------------------------------------------------
key_names = st.sampled_from(
    [k.name.split(".")[0] for k in SERVER_KEYS + AGENT_KEYS] + ["metrics", "lifecycle", "nonsense", "port"]
)


@SETTINGS
@given(st.dictionaries(key_names, json_values, max_size=6), st.booleans())
def test_config_loader_accepts_or_names_the_problem(tmp_path_factory, data, server):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        load(SERVER_KEYS if server else AGENT_KEYS, str(path))
    except ConfigError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e)


@SETTINGS
@given(st.binary(max_size=200))
def test_config_loader_survives_arbitrary_file_bytes(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_bytes(raw)
    try:
        load(AGENT_KEYS, str(path))
    except ConfigError:
        pass


# -- the agent's HTTP/1.1 front, sans network ------------------------------------------------
class RefusingOpener:
    """Every destination refused (503): no tunnel in this test."""

    name = "none"

    def answers_early(self, destination) -> bool:
        return False

    def open(self, destination, protocol):
        return defer.fail(OpenFailed(503, "no tunnel in this test"))


class StubPages:
    def health(self) -> dict:
        return {"connected": False}

    def pac(self, host: str) -> str:
        return "function FindProxyForURL(u, h) { return 'DIRECT'; }"

    def serves_host(self, host: str) -> bool:
        return host.startswith("127.0.0.1")


def stub_site() -> ProxySite:
    return ProxySite(Clock(), RefusingOpener(), StubPages(), head_timeout=5.0, max_header_bytes=4096)


class SocketLikeTransport(StringTransport):
    """As a TCP transport: unregistering no producer is allowed, half-close is offered."""

    def unregisterProducer(self):
        self.producer = None

    def loseWriteConnection(self):
        self.loseConnection()


http_like = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda method, target, headers, body: (
            method + b" " + target + b" HTTP/1.1\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body
        ),
        st.sampled_from([b"GET", b"POST", b"CONNECT", b"PUT", b"G\x00T", b""]),
        st.sampled_from(
            [b"http://127.0.0.1:1/", b"127.0.0.1:443", b"/health", b"/proxy.pac", b"/", b"http://[::1", b"*"]
        )
        | st.binary(max_size=30),
        st.lists(
            st.sampled_from(
                [
                    b"Host: x",
                    b"Content-Length: 3",
                    b"Content-Length: -1",
                    b"Transfer-Encoding: chunked",
                    b"Connection: upgrade",
                    b"Upgrade: websocket",
                    b"X: \xff",
                ]
            )
            | st.binary(max_size=20),
            max_size=5,
        ),
        st.binary(max_size=40),
    ),
)


@SETTINGS
@given(st.lists(http_like, min_size=1, max_size=3))
def test_http_front_answers_or_closes_never_raises(chunks):
    agent = stub_site()
    front = ProxyFront(agent)
    transport = SocketLikeTransport()
    front.makeConnection(transport)
    for chunk in chunks:
        front.dataReceived(chunk)
    front.readConnectionLost()
    agent.clock.advance(10)  # any head timer fires
    out = transport.value()
    assert out == b"" or out.startswith(b"HTTP/1.1 "), out[:80]
    front.connectionLost(None)
    assert agent.clients == 0


# -- SOCKS5 --------------------------------------------------------------------------------------
@SETTINGS
@given(st.lists(st.binary(max_size=40), max_size=4), st.booleans())
def test_socks_parser_returns_events_or_a_socks_error(chunks, start_with_greeting):
    parser = socks.Socks5Server()
    data = [b"\x05\x01\x00", *chunks] if start_with_greeting else chunks
    try:
        for chunk in data:
            for event in parser.receive_data(chunk):
                if isinstance(event, socks.Greeting):
                    assert parser.choose(event)[0] == 5
                    parser.receive_data(b"")
                else:
                    assert isinstance(event, socks.Connect) and event.destination.port > 0
    except socks.SocksError as e:
        assert e.reply is None or 0 < e.reply <= 8


# -- egress rules, revocation lists ----------------------------------------------------------
@SETTINGS
@given(st.text(max_size=40))
def test_allow_rules_parse_or_raise_value_error(text):
    try:
        parse_allow_rule(text)
    except ValueError:
        pass


@SETTINGS
@given(st.text(max_size=200))
def test_revocation_lists_parse_or_name_the_line(text):
    try:
        serials, fingerprints = parse(text, "revoked.txt")
        assert all(len(f) == 64 for f in fingerprints) and all(s >= 0 for s in serials)
    except RevocationError as e:
        assert str(e).startswith("revoked.txt:")


# -- Lambda events ------------------------------------------------------------------------------
@SETTINGS
@given(
    json_values
    | st.dictionaries(
        st.sampled_from(["httpMethod", "headers", "body", "isBase64Encoded", "requestContext", "path"]),
        json_values,
        max_size=5,
    )
)
def test_lambda_event_parsing_is_a_bad_event_or_a_method(event):
    try:
        method = method_of(event)
        assert isinstance(method, str) and method == method.upper()
        assert isinstance(body_of(event), dict)
    except BadEvent as e:
        assert str(e)


@SETTINGS
@given(
    json_values
    | st.fixed_dictionaries(
        {"httpMethod": st.sampled_from(["GET", "POST", "get", ""])},
        optional={"body": json_values, "headers": json_values, "isBase64Encoded": st.booleans()},
    )
)
def test_handlers_always_return_a_proxy_response(event):
    answer = respond(event, "POST", lambda event: (200, {"status": "stopped", "callerIp": source_ipv4(event)}))
    assert answer["statusCode"] in (200, 400, 405)
    assert isinstance(json.loads(answer["body"]), dict)


@SETTINGS
@given(
    json_values
    | st.fixed_dictionaries(
        {"requestContext": json_values | st.fixed_dictionaries({"identity": json_values, "http": json_values})}
    )
)
def test_the_callers_address_is_an_ipv4_or_none_whatever_the_event(event):
    import ipaddress

    address = source_ipv4(event)
    assert address is None or ipaddress.ip_address(address).version == 4
