"""The egress policy: unit checks of every rule, and end to end in a loopback-only namespace."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel.server.egress import (
    DENIED_NETWORKS,
    EgressDenied,
    EgressPolicy,
    parse_allow_rule,
    policy_from_strings,
    unwrap,
)

DEFAULT = EgressPolicy()


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "169.254.170.2",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "127.0.0.1",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "64:ff9b::a9fe:a9fe",
        "2002:a9fe:a9fe::1",
        "192.0.2.1",
        # IPv4 carried in IPv6 forms that are not routed to it, and the rest of IANA's registries
        "::127.0.0.1",
        "::169.254.169.254",
        "::8.8.8.8",
        "::ffff:0:127.0.0.1",
        "::ffff:0:8.8.8.8",
        "64:ff9b:1::7f00:1",
        "64:ff9b:1::808:808",
        "fec0::1",
        "100::1",
        "2001:db8::1",
        "3fff::1",
        "5f00::1",
        "2001::1",
        "2001:2::1",
        "2001:10::1",
        "4000::1",
        "::2",
        "192.0.0.8",
        "192.0.0.170",
        "198.18.0.1",
        "198.51.100.1",
        "203.0.113.1",
        "255.255.255.255",
        "192.88.99.1",
    ],
)
def test_default_policy_refuses_non_public(address):
    assert DEFAULT.denial(ipaddress.ip_address(address), 80) is not None


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "8.8.8.8",
        "2606:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "192.0.0.9",
        "192.31.196.1",
        "2001:4:112::1",
    ],
)
def test_default_policy_allows_public(address):
    assert DEFAULT.denial(ipaddress.ip_address(address), 443) is None


def test_refusal_names_the_rule():
    assert "instance metadata" in DEFAULT.denial(ipaddress.ip_address("169.254.169.254"), 80)


def test_allow_rule_with_ports():
    policy = policy_from_strings(["127.0.0.1:8000-8010", "[::1]:443", "10.0.0.0/8"])
    assert policy.denial(ipaddress.ip_address("127.0.0.1"), 8005) is None
    assert policy.denial(ipaddress.ip_address("127.0.0.1"), 8011) is not None
    assert policy.denial(ipaddress.ip_address("::1"), 443) is None
    assert policy.denial(ipaddress.ip_address("::1"), 80) is not None
    assert policy.denial(ipaddress.ip_address("10.9.9.9"), 1) is None
    assert policy.denial(ipaddress.ip_address("169.254.169.254"), 80) is not None


def test_one_bad_address_taints_the_whole_name():
    with pytest.raises(EgressDenied):
        DEFAULT.check_all([ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("10.0.0.1")], 443)
    with pytest.raises(EgressDenied):
        DEFAULT.check_all([], 443)


@pytest.mark.parametrize("bad", ["not-an-ip", "127.0.0.1:0", "127.0.0.1:9-1", "127.0.0.1:x", "[::1", "[::1]x"])
def test_bad_allow_rules_are_rejected(bad):
    with pytest.raises(ValueError):
        parse_allow_rule(bad)


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_every_ipv4_is_judged_the_same_bare_or_mapped(n):
    v4 = ipaddress.IPv4Address(n)
    mapped = ipaddress.IPv6Address(f"::ffff:{v4}")
    assert (DEFAULT.denial(v4, 80) is None) == (DEFAULT.denial(mapped, 80) is None)
    if DEFAULT.denial(v4, 80) is None:
        assert not any(
            v4 in network for _, network in DENIED_NETWORKS if network.version == 4
        ) or v4 in ipaddress.ip_network("192.0.0.8/29")


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_every_allowed_ipv6_is_global_unicast_or_carries_an_allowed_ipv4(n):
    v6 = ipaddress.IPv6Address(n)
    if DEFAULT.denial(v6, 80) is None:
        inner = unwrap(v6)
        assert (inner.version == 4 and DEFAULT.denial(inner, 80) is None) or v6 in ipaddress.ip_network("2000::/3")


def _can_unshare() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.processes
def test_forbidden_destinations_refused_in_loopback_only_namespace(certs, tmp_path):
    if not _can_unshare():
        if os.environ.get("CI"):
            pytest.fail("CI must be able to build a loopback-only namespace (root, unshare, ip)")
        pytest.skip("needs root, unshare and ip to build a loopback-only namespace")
    probe = Path(__file__).with_name("egress_probe.py")
    # Names that resolve to IPv6 forms carrying an IPv4 address: a private /etc/hosts,
    # bind-mounted in a mount namespace of the probe's own.
    hosts = tmp_path / "hosts"
    hosts.write_text(
        Path("/etc/hosts").read_text()
        + "\n::127.0.0.1 v4-compatible.fluidity.test\n::ffff:0:127.0.0.1 v4-translated.fluidity.test\n"
        "64:ff9b:1::7f00:1 nat64-local.fluidity.test\nfec0::1 site-local.fluidity.test\n"
    )
    script = 'mount --bind "$1" /etc/hosts && shift && exec "$@"'
    command = [
        "unshare",
        "-n",
        "-m",
        "sh",
        "-c",
        script,
        "sh",
        str(hosts),
        sys.executable,
        str(probe),
        str(certs.directory),
        str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, timeout=180)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    results = json.loads(done.stdout.decode().strip().splitlines()[-1])
    for path in ("h2", "http/1.1"):
        for target, answer in results[path].items():
            assert "403" in answer, (path, target, answer)
    assert results["allowed"] == ["HTTP/1.1 200 Connection established", "ping"]
    assert results["canary_connections"] == 0
    # The only destination the server ever dialled is the one the allow list opens.
    assert results["dial_lines"], "the server logs each dial at debug level"
    assert all(line.endswith(f":{results['allowed_port']}") for line in results["dial_lines"]), results["dial_lines"]
