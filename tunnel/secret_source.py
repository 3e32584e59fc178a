"""Where a secret comes from: `env:VAR`, `file:PATH`, `keyring`, or the value itself.

The proxy's password (`upstream_proxy_password`) and the control plane's API key
(`lifecycle.api_key`, `fluidity control-plane --api-key`, `--allow-ip auto --api-key`) are
written the same way. Only the first three forms may be given on a command line: every
user of the machine can read a process's arguments (`ps`, /proc), so a secret typed there
is refused with a line that says how to give it instead. `keyring` is the platform's
credential store through the keyring package (Windows Credential Manager, the macOS
Keychain, the Secret Service on Linux), under a service and user the caller names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

KEYRING = "keyring"
FORMS = "env:VAR, file:PATH or keyring"
API_KEY_SERVICE = "fluidity-control-plane"  # the API key's keyring entry: this service, the control plane's host


def api_key_entry(host: str) -> KeyringEntry:
    """Where `api_key: keyring` looks for the key of the control plane at `host`."""
    return KeyringEntry(
        API_KEY_SERVICE,
        host,
        f"keyring set {API_KEY_SERVICE} {host} (the keyring package's command; it asks for the key)",
        "API key",
    )


class SecretUnavailable(ValueError):
    """The secret cannot be had from where the setting says it is; the message says why and how to fix it."""


@dataclass(frozen=True)
class KeyringEntry:
    """Where `keyring` looks: the service, the user, and the command that stores one."""

    service: str
    user: str
    store_with: str
    noun: str = "password"


def is_reference(spec: str) -> bool:
    """Says where the secret is rather than being it: safe to show, and to give on a command line."""
    spec = spec.strip()
    return spec == KEYRING or spec.startswith(("env:", "file:"))


def command_line_refusal(value: str) -> str:
    """Why `value` may not be a command-line argument ("" when it may: empty, or a reference)."""
    if not value.strip() or is_reference(value):
        return ""
    return (
        f"the secret itself is refused on a command line, where every user of this machine can read it (the "
        f"process list): give {FORMS} instead, or set it in the config file"
    )


def resolve(spec: str, what: str, entry: KeyringEntry | None = None, environ=os.environ, keyring_module=None) -> str:
    """The secret `spec` names (`what` is the setting, for messages); a plain value is itself."""
    spec = spec.strip()
    if spec.startswith("env:"):
        value = environ.get(spec[4:], "")
        if not value:
            raise SecretUnavailable(f"'{what}': environment variable {spec[4:]} is not set or empty")
        return value
    if spec.startswith("file:"):
        return _from_file(Path(os.path.expanduser(spec[5:])), what)
    if spec == KEYRING and entry is not None:
        return _from_keyring(entry, what, keyring_module)
    return spec


def _from_file(path: Path, what: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()  # an editor's final newline is not part of it
    except OSError as e:
        raise SecretUnavailable(f"'{what}': cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise SecretUnavailable(f"'{what}': {path} is not UTF-8 text") from None
    if not value:
        raise SecretUnavailable(f"'{what}': {path} is empty")
    return value


def _from_keyring(entry: KeyringEntry, what: str, keyring_module=None) -> str:
    keyring = keyring_module or keyring_package(what)
    try:
        value = keyring.get_password(entry.service, entry.user)
    except Exception as e:  # no backend on this system, a locked store, D-Bus gone
        raise SecretUnavailable(
            f"'{what}: keyring': the system's credential store did not answer ({type(e).__name__}: {e})"
        ) from None
    if not value:
        raise SecretUnavailable(
            f"'{what}: keyring': no {entry.noun} for {entry.user} in the system's credential store; store one "
            f"with: {entry.store_with}"
        )
    return value


def keyring_package(what: str):
    """The keyring package, or a line saying it is needed."""
    try:
        import keyring
    except ImportError:
        raise SecretUnavailable(f"'{what}: keyring' needs the keyring package (pip install keyring)") from None
    return keyring
