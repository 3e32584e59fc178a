"""`upstream_proxy: auto` on macOS: the network settings in the form `scutil --proxy` prints
them, read for the PAC URL and the proxy set by hand. No Mac runs here: the parsing is tested
on such outputs (written out below, not captured on a Mac), and the choice the agent makes
from them through the same ProxyChoice every platform uses."""

from __future__ import annotations

import sys

from tunnel.agent import macos_proxy_settings, proxy_choice
from tunnel.agent.macos_proxy_settings import MacProxySettings, parse
from tunnel.agent.proxy_choice import ProxyChoice
from tunnel.agent.system_proxy import ManualProxy

# A corporate Mac: a PAC file, and an HTTPS proxy set by hand with exceptions.
CORPORATE = """<dictionary> {
  ExceptionsList : <array> {
    0 : *.local
    1 : 169.254/16
    2 : *.corp.example
    3 : 10/8
  }
  ExcludeSimpleHostnames : 1
  FTPPassive : 1
  HTTPEnable : 1
  HTTPPort : 8080
  HTTPProxy : web.corp.example
  HTTPSEnable : 1
  HTTPSPort : 3128
  HTTPSProxy : proxy.corp.example
  ProxyAutoConfigEnable : 1
  ProxyAutoConfigURLString : http://wpad.corp.example/wpad.dat
}
"""
# A Mac at home: nothing set.
HOME = """<dictionary> {
  ExceptionsList : <array> {
    0 : *.local
    1 : 169.254/16
  }
  FTPPassive : 1
  HTTPEnable : 0
  HTTPSEnable : 0
  ProxyAutoConfigEnable : 0
}
"""
# A PAC URL typed but switched off, and an HTTPS proxy on with no port.
SWITCHED_OFF = """<dictionary> {
  HTTPSEnable : 1
  HTTPSProxy : fd00::3128
  ProxyAutoConfigEnable : 0
  ProxyAutoConfigURLString : http://wpad.corp.example/wpad.dat
}
"""


def test_a_corporate_mac_s_settings():
    settings = parse(CORPORATE)
    assert settings.pac_url == "http://wpad.corp.example/wpad.dat"
    manual = settings.manual
    assert manual is not None and manual.url == "http://proxy.corp.example:3128"  # HTTPS, not HTTP's proxy
    assert manual.where == "the macOS network settings"
    for host in ("printer.local", "wiki.corp.example", "intranet", "169.254.10.1", "10.20.30.40"):
        assert manual.bypassed(host), host
    for host in ("example.com", "corp.example.evil.test", "11.0.0.1", "[2001:db8::1]"):
        assert not manual.bypassed(host), host


def test_a_home_mac_has_nothing_and_switched_off_settings_count_for_nothing():
    assert parse(HOME) == MacProxySettings()
    off = parse(SWITCHED_OFF)
    assert off.pac_url == ""  # typed, but off
    assert off.manual == ManualProxy("http://[fd00::3128]:443", (), "the macOS network settings")
    assert parse("") == MacProxySettings() and parse("garbage\n}") == MacProxySettings()


def test_the_agent_takes_the_mac_s_hand_set_proxy_when_there_is_no_pac_file():
    manual = parse(CORPORATE).manual
    choice = ProxyChoice("auto", environ={}, find=lambda *a, **k: None, manual=lambda: manual)
    proxy, why = choice.choose("fluidity.example.net", 443)
    assert proxy is not None and (proxy.host, proxy.port) == ("proxy.corp.example", 3128)
    assert why == "the macOS network settings (set by hand; no PAC file)"
    assert choice.choose("git.corp.example", 443) == (
        None,
        "direct: git.corp.example is an exception in the macOS network settings",
    )


def test_the_pac_url_comes_from_scutil_when_pypac_cannot_ask_pyobjc(monkeypatch):
    """pypac imports PyObjC's SystemConfiguration for it, which a pip install rarely has."""
    import pypac.os_settings

    def no_pyobjc():
        raise ImportError("No module named 'SystemConfiguration'")

    monkeypatch.setattr(pypac.os_settings, "autoconfig_url_from_preferences", no_pyobjc)
    monkeypatch.setattr(macos_proxy_settings, "read", lambda timeout=3.0: parse(CORPORATE))
    assert proxy_choice._macos_pac_url() == "http://wpad.corp.example/wpad.dat"
    monkeypatch.setattr(macos_proxy_settings, "read", lambda timeout=3.0: parse(HOME))
    assert proxy_choice._macos_pac_url() is None


def test_elsewhere_scutil_is_not_asked():
    if sys.platform != "darwin":
        assert macos_proxy_settings.read() == MacProxySettings()
