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

from tunnel.egress import EgressDenied, EgressPolicy, parse_allow_rule, policy_from_strings

DEFAULT = EgressPolicy()


@pytest.mark.parametrize(
    "address",
    ["169.254.169.254", "169.254.170.2", "10.1.2.3", "172.16.0.1", "192.168.1.1", "127.0.0.1", "100.64.0.1", "0.0.0.0", "224.0.0.1", "240.0.0.1",
     "::1", "::", "fe80::1", "fc00::1", "ff02::1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "192.0.2.1"],
)
def test_default_policy_refuses_non_public(address):
    assert DEFAULT.denial(ipaddress.ip_address(address), 80) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"])
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
        assert v4.is_global


def _can_unshare() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


def test_forbidden_destinations_refused_in_loopback_only_namespace(certs, tmp_path):
    if not _can_unshare():
        if os.environ.get("CI"):
            pytest.fail("CI must be able to build a loopback-only namespace (root, unshare, ip)")
        pytest.skip("needs root, unshare and ip to build a loopback-only namespace")
    probe = Path(__file__).with_name("egress_probe.py")
    done = subprocess.run(["unshare", "-n", sys.executable, str(probe), str(certs.directory), str(tmp_path)], capture_output=True, timeout=120)
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
