"""Secrets out of text: no password from a URL, no private key, in a message, a log or a page.

A proxy URL may carry `user:password@`, and the errors about it (a bad port, a host that
does not parse) and the lines that name it must still say which URL, without the password.
`redact` finds every `scheme://user:password@` in a text, well-formed or not (the error
path is where it is not), keeps the scheme, the user and what follows the `@`, and puts
`***` where the password was. A PEM private key block becomes `[private key]`. Applied
where a message is made and again where text leaves the process (the log observers, the
status page, doctor's lines, twistd's one-line errors).
"""

from __future__ import annotations

import re

HIDDEN = "***"

# The password runs to the last `@` before the text's next space, quote or angle bracket:
# a password with an unencoded `@` or `/` is hidden whole (urlsplit splits it the same way).
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:@/'\"<>]*):[^\s'\"<>]*@")
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S)


def redact(text: str) -> str:
    """`text` with every URL's password replaced by `***` and every private key removed."""
    if "://" in text:
        text = _USERINFO.sub(lambda m: f"{m['head']}:{HIDDEN}@", text)
    if "PRIVATE KEY" in text:
        text = _PRIVATE_KEY.sub("[private key]", text)
    return text


def redact_url(url: str) -> str:
    """A URL as written by a user (the scheme may be left out: `user:pass@proxy:3128`), for a message."""
    shown = redact(url if "://" in url else f"http://{url}")
    return shown if "://" in url else shown.removeprefix("http://")
