"""The firewall lab (issue 25, item 8): every row of `bench/firewall_lab.py` as a user
would meet it, in network namespaces of the lab's own making (nothing leaves the machine).
A port filter passing 80/443 only, a network whose only way out is Debian's stock squid
(with Basic, Digest, NTLM and Negotiate against a real KDC where a row says so), a PAC
file, a TLS-intercepting mitmproxy, a laptop with no working resolver in all of them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)

LAB = Path(__file__).resolve().parent.parent / "bench" / "firewall_lab.py"


@pytest.fixture(scope="module")
def rows() -> dict:
    for tool in ("squid", "nft", "unshare", "curl", "krb5kdc", "kinit"):
        assert shutil.which(tool), f"{tool} is needed (.ci/run installs it)"
    run = subprocess.run([sys.executable, str(LAB), "--json"], capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    found = {r["scenario"]: r for r in json.loads(run.stdout.strip().splitlines()[-1])}
    print(json.dumps(list(found.values()), indent=1))
    return found


def served(row: dict) -> None:
    assert row["tunnel_up"] and row["ok"] and row["ttfb_s"] is not None, row


def test_a_port_filter_passes_the_server_on_443_and_says_why_8443_fails(rows):
    served(rows["port filter (80/443 only), direct, server on 443"])
    blocked = rows["port filter (80/443 only), direct, server on 8443"]
    assert (
        not blocked["ok"]
        and "no answer from 203.0.113.7:8443" in blocked["got"]
        and "pass only 80 and 443: run the server on 443" in blocked["got"]
    ), blocked


def test_a_firewall_that_forgets_the_flow_costs_a_client_about_the_probe_timeout(rows):
    """Issue 25, item 7 in the lab: the router's conntrack table flushed under a quiet
    tunnel (its filter drops packets of flows it does not hold). The next client's stream
    carries a PING; no answer in probe_timeout (3 s) and the agent opens a new connection
    and the stream on it, well before the keepalive (30 s + 20 s here) would notice."""
    row = rows["port filter forgets the tunnel's flow (conntrack flushed)"]
    assert row["flushed"] and row["tunnel_up"], row
    served(row)
    assert row["tunnels_up"] == 2, row  # the forgotten connection was replaced
    assert 2.5 < row["waited_s"] < 10, row


def test_with_no_way_out_but_the_proxy_the_stock_squid_carries_the_tunnel(rows):
    alone = rows["direct with no way out but the proxy"]
    assert not alone["ok"] and "set upstream_proxy (upstream_proxy: auto finds it" in alone["got"], alone
    served(rows["stock squid, server on 443"])
    # The laptop resolves nothing; the proxy resolves the server's name, asked by CONNECT.
    served(rows["stock squid, the server by a name only the proxy resolves"])
    refused = rows["stock squid, server on 8443"]
    assert (
        not refused["ok"] and "403 Forbidden" in refused["got"] and "allows CONNECT to port 443 only" in refused["got"]
    ), refused


def woken_through(row: dict, caller: str) -> None:
    """The agent had only the control plane: it woke the server, learnt its address, and
    stopped it on exit, every call arriving from `caller` (the proxy's address when it went
    through one: the control plane records who called)."""
    served(row)
    calls = row["control_plane_calls"]
    # GET /status only while the task is still starting: a wake that finds it running
    # already carries its address (CI once saw just the wake and the kill). Whatever was
    # called, every call came the tunnel's way.
    for call in ("POST /wake", "POST /kill"):
        assert any(c.startswith(f"{call} from {caller} -> 200") for c in calls), calls
    assert all(f" from {caller} " in c for c in calls), calls
    assert row["server_dns_name"] == "ip-203-0-113-7.ec2.internal", row


def test_the_control_plane_is_reached_the_way_the_tunnel_is(rows):
    woken_through(rows["port filter, the server woken and found by the control plane"], "192.0.2.10")
    proxied = rows["stock squid, the control plane by a name only the proxy resolves"]
    woken_through(proxied, "203.0.113.1")
    log = proxied["proxy_log"]
    # Both by name, left to the proxy (the laptop resolves nothing): the API's, and the task's public DNS name.
    assert (
        "CONNECT api.lab.test:443" in log
        and "CONNECT ip-203-0-113-7.ec2.internal:443" in log
        and "CONNECT 203.0.113" not in log
    ), log
    assert any("(CONNECT ip-203-0-113-7.ec2.internal:443)" in n for n in proxied["notes"]), proxied


def test_every_proxy_form_carries_the_control_plane_too(rows):
    for scenario in (
        "stock squid found by a PAC file (upstream_proxy: auto)",
        "squid asking for Basic",
        "squid asking for Digest",
        "squid asking for NTLM",
        "squid asking for NTLM, found by a PAC file, the password from the keyring",
        "squid asking for Negotiate (Kerberos, the user's ticket)",
    ):
        woken_through(rows[scenario], "203.0.113.1")
    for scheme in ("Basic", "Digest", "NTLM"):
        log = rows[f"squid asking for {scheme}"]["proxy_log"]
        assert "TCP_DENIED" not in log.replace("TCP_DENIED/407", ""), log  # only the challenges were refused
        assert "CONNECT api.lab.test:443" in log, log


def test_the_proxy_found_by_a_pac_file(rows):
    row = rows["stock squid found by a PAC file (upstream_proxy: auto)"]
    served(row)
    assert any(n.startswith("upstream_proxy auto: using the PAC file at") for n in row["notes"]), row


def test_basic_digest_and_ntlm_asked_by_squid(rows):
    for scheme in ("Basic", "Digest", "NTLM"):
        row = rows[f"squid asking for {scheme}"]
        served(row)
        assert any(f"authenticated to the upstream proxy with {scheme}" in n for n in row["notes"]), row


def test_negotiate_against_a_real_kdc_with_the_users_own_ticket(rows):
    """Single sign-on: no credentials in the agent's configuration, only the ticket kinit
    put in the user's cache; squid's negotiate_kerberos_auth checks it with the proxy's
    keytab from the lab's krb5kdc."""
    row = rows["squid asking for Negotiate (Kerberos, the user's ticket)"]
    served(row)
    assert any("authenticated to the upstream proxy with Negotiate as the logged-in user" in n for n in row["notes"]), (
        row
    )
    assert "alice@CORP.LAB.TEST" in row["proxy_log"] and "TCP_TUNNEL/200" in row["proxy_log"], row["proxy_log"]
    refused = rows["squid asking for Negotiate, no ticket"]
    assert (
        not refused["ok"]
        and "407" in refused["got"]
        and "no Kerberos ticket" in refused["got"]
        and "kinit" in refused["got"]
    ), refused


def test_credentials_for_a_proxy_found_by_pac_come_from_the_keyring(rows):
    row = rows["squid asking for NTLM, found by a PAC file, the password from the keyring"]
    served(row)
    assert any("authenticated to the upstream proxy with NTLM as CORP\\alice" in n for n in row["notes"]), row
    assert any(n.startswith("upstream_proxy auto: using the PAC file at") for n in row["notes"]), row


def test_tls_interception_is_named(rows):
    row = rows.get("TLS-intercepting proxy (mitmproxy)")
    assert row is not None, "mitmproxy is needed (.ci/run installs it in /opt/fluidity-mitmproxy)"
    assert not row["ok"] and "intercepts TLS" in row["got"] and "mitmproxy" in row["got"], row


def test_kerberos_goes_to_a_pac_named_proxy_only_in_an_allowed_domain(rows):
    """Negotiate as the logged-in user is a credential too: a proxy a PAC file names gets the
    user's Kerberos token only when upstream_proxy_auth_allow covers it (here *.corp.lab.test)."""
    allowed = rows["squid asking for Negotiate, found by a PAC file, its domain allowed"]
    served(allowed)
    sso = "authenticated to the upstream proxy with Negotiate as the logged-in user"
    assert any(sso in n for n in allowed["notes"]), allowed
    assert "alice@CORP.LAB.TEST" in allowed["proxy_log"] and set(allowed["proxy_authorizations"]) == {"Negotiate"}, (
        allowed
    )
    refused = rows["squid asking for Negotiate, found by a PAC file, not allowed"]
    assert (
        not refused["ok"]
        and "asks for Negotiate authentication and gets no credentials" in refused["got"]
        and "upstream_proxy_auth_allow: [proxy.corp.lab.test]" in refused["got"]
    ), refused
    assert refused["proxy_authorizations"] == [] and "alice@" not in refused["proxy_log"], refused
