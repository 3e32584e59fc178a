"""The corporate proxy's user name and password when the proxy's URL carries none.

A proxy found by `upstream_proxy: auto` (a PAC file) or $HTTPS_PROXY has no credentials in
it, and a password written into a config file is one more copy of it. `upstream_proxy_user`
names the user; `upstream_proxy_password` says where the password is: `env:VAR`, `keyring`
(the platform's credential store through the keyring package: Windows Credential Manager,
the macOS Keychain, the Secret Service on Linux; `fluidity proxy-password` stores it), or
the password itself. Looked up once, when the agent starts, so a missing one is a clear
line then rather than a 407 later.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from urllib.parse import unquote, urlsplit

from tunnel.agent.upstream import UpstreamProxy

KEYRING = "keyring"
KEYRING_SERVICE = "fluidity-proxy"  # the keyring entry: this service, the user's name


class CredentialsError(ValueError):
    """The password cannot be had from where the configuration says it is."""


@dataclass(frozen=True)
class ProxyCredentials:
    username: str = ""
    password: str = ""

    def apply(self, proxy: UpstreamProxy | None) -> UpstreamProxy | None:
        """The proxy with these credentials where its own URL left them out; none for a proxy they are withheld from."""
        if proxy is None or not self.username or proxy.credentials_withheld:
            return proxy
        if not proxy.username:
            return replace(proxy, username=self.username, password=self.password)
        if not proxy.password and proxy.username == self.username:
            return replace(proxy, password=self.password)
        return proxy


def url_user(url: str) -> str:
    """The user name in a proxy URL, if any (`auto` and plain host:port have none)."""
    if "://" not in url:
        return ""
    try:
        return unquote(urlsplit(url.strip()).username or "")
    except ValueError:
        return ""


def credentials_from(
    user: str, password_spec: str, upstream_proxy: str = "", environ=os.environ, keyring_module=None
) -> ProxyCredentials:
    """Resolve the settings into credentials; CredentialsError says what is missing and how to fix it."""
    username = user or url_user(upstream_proxy)
    spec = password_spec.strip()
    if not spec:
        return ProxyCredentials(username, "") if user else ProxyCredentials()
    if not username:
        raise CredentialsError(
            "'upstream_proxy_password' needs a user name: set 'upstream_proxy_user' (e.g. CORP\\alice)"
        )
    if spec.startswith("env:"):
        value = environ.get(spec[4:], "")
        if not value:
            raise CredentialsError(f"'upstream_proxy_password': environment variable {spec[4:]} is not set or empty")
        return ProxyCredentials(username, value)
    if spec == KEYRING:
        return ProxyCredentials(username, _from_keyring(username, keyring_module))
    return ProxyCredentials(username, password_spec)


def from_settings(config, environ=os.environ) -> ProxyCredentials:
    """The agent settings' upstream_proxy_user / upstream_proxy_password, resolved."""
    return credentials_from(config.upstream_proxy_user, config.upstream_proxy_password, config.upstream_proxy, environ)


def _from_keyring(username: str, keyring_module=None) -> str:
    keyring = keyring_module or _keyring()
    try:
        value = keyring.get_password(KEYRING_SERVICE, username)
    except Exception as e:  # no backend on this system, a locked store, D-Bus gone
        raise CredentialsError(
            f"'upstream_proxy_password: keyring': the system's credential store did not answer ({type(e).__name__}: "
            f"{e})"
        ) from None
    if not value:
        raise CredentialsError(
            f"'upstream_proxy_password: keyring': no password for {username} in the system's credential store; store "
            f"one with: fluidity proxy-password --user '{username}'"
        )
    return value


def _keyring():
    try:
        import keyring
    except ImportError:
        raise CredentialsError(
            "'upstream_proxy_password: keyring' needs the keyring package (pip install keyring)"
        ) from None
    return keyring


def store(username: str, password: str, keyring_module=None) -> str:
    """Put the password in the system's credential store; says which store it went to."""
    keyring = keyring_module or _keyring()
    try:
        keyring.set_password(KEYRING_SERVICE, username, password)
        return type(keyring.get_keyring()).__name__
    except Exception as e:
        raise CredentialsError(f"the system's credential store refused it ({type(e).__name__}: {e})") from None


def forget(username: str, keyring_module=None) -> bool:
    """Remove the stored password; False when there was none."""
    keyring = keyring_module or _keyring()
    try:
        keyring.delete_password(KEYRING_SERVICE, username)
        return True
    except Exception as e:
        if type(e).__name__ == "PasswordDeleteError":
            return False
        raise CredentialsError(f"the system's credential store refused it ({type(e).__name__}: {e})") from None
