"""`upstream_proxy: auto` with the proxy a Windows user set by hand (Internet Settings:
ProxyEnable, ProxyServer, ProxyOverride). The values as Windows writes them are parsed here;
scripts/windows-check writes them with `wine reg add` and reads them back through winreg."""

from __future__ import annotations

from tunnel.agent.proxy_choice import ProxyChoice
from tunnel.agent.system_proxy import ManualProxy
from tunnel.agent.windows_proxy_settings import parse, read


def test_the_forms_windows_writes():
    assert parse(1, "proxy.corp.test:8080") == ManualProxy("http://proxy.corp.test:8080")
    per_scheme = parse(1, "http=web.corp.test:80;https=tls.corp.test:8443;socks=s.corp.test:1080")
    assert per_scheme is not None and per_scheme.url == "http://tls.corp.test:8443"
    assert parse(1, "http=web.corp.test:80;ftp=f.corp.test:21") is None  # none for HTTPS: direct, as Windows
    assert parse(0, "proxy.corp.test:8080") is None  # set but switched off
    assert parse(1, "") is None


def test_exceptions_go_direct():
    manual = parse(1, "proxy.corp.test:8080", "*.intranet.test;10.*;<local>; ")
    assert manual is not None and manual.bypass == ("*.intranet.test", "10.*", "<local>")
    assert manual.bypassed("wiki.INTRANET.test") and manual.bypassed("10.1.2.3") and manual.bypassed("fileserver")
    assert not manual.bypassed("example.com") and not manual.bypassed("::1")


def test_auto_without_a_pac_file_takes_the_hand_set_proxy_before_the_environment():
    manual = parse(1, "https=proxy.corp.test:3128", "<local>")
    choice = ProxyChoice("auto", environ={"HTTPS_PROXY": "http://env.test:1"}, manual=lambda: manual)
    proxy, why = choice.choose("203.0.113.7", 443)
    assert proxy is not None and (proxy.host, proxy.port) == ("proxy.corp.test", 3128), why
    assert why == "the Windows proxy settings (set by hand; no PAC file)"
    assert choice.choose("intranet", 443) == (None, "direct: intranet is an exception in the Windows proxy settings")
    named = ProxyChoice("http://named.test:8080", environ={}, manual=lambda: manual)
    assert named.choose("203.0.113.7", 443)[0].host == "named.test"  # only `auto` looks at the settings


def test_no_settings_off_windows():
    assert read() is None
