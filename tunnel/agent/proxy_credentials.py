"""The corporate proxy's user name and password when the proxy's URL carries none.

A proxy found by `upstream_proxy: auto` (a PAC file) or $HTTPS_PROXY has no credentials in
it, and a password written into a config file is one more copy of it. `upstream_proxy_user`
names the user; `upstream_proxy_password` says where the password is (`secret_source`):
`env:VAR`, `file:PATH`, `keyring` (the platform's credential store through the keyring
package: Windows Credential Manager, the macOS Keychain, the Secret Service on Linux;
`fluidity proxy-password` stores it), or the password itself. Looked up once, when the
agent starts, so a missing one is a clear line then rather than a 407 later.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from urllib.parse import unquote, urlsplit

from tunnel.agent.upstream import UpstreamProxy
from tunnel.secret_source import KeyringEntry, SecretUnavailable, is_reference, keyring_package, resolve

KEYRING_SERVICE = "fluidity-proxy"  # the keyring entry: this service, the user's name


class CredentialsError(ValueError):
    """The password cannot be had from where the configuration says it is."""


@dataclass(frozen=True)
class ProxyCredentials:
    username: str = ""
    password: str = field(default="", repr=False)

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
    if not is_reference(spec):
        return ProxyCredentials(username, password_spec)
    entry = KeyringEntry(KEYRING_SERVICE, username, f"fluidity proxy-password --user '{username}'")
    try:
        return ProxyCredentials(username, resolve(spec, "upstream_proxy_password", entry, environ, keyring_module))
    except SecretUnavailable as e:
        raise CredentialsError(str(e)) from None


def from_settings(config, environ=os.environ) -> ProxyCredentials:
    """The agent settings' upstream_proxy_user / upstream_proxy_password, resolved."""
    return credentials_from(config.upstream_proxy_user, config.upstream_proxy_password, config.upstream_proxy, environ)


def _keyring():
    try:
        return keyring_package("upstream_proxy_password")
    except SecretUnavailable as e:
        raise CredentialsError(str(e)) from None


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
