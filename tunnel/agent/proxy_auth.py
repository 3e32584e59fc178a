"""Proxy authentication driven by the proxy's own challenges (a 407's Proxy-Authenticate).

Corporate proxies mostly ask for NTLM or Negotiate (Kerberos), some for Digest, a few for
Basic. `ProxyAuthenticator` answers whichever the proxy offers, strongest first: Negotiate
and NTLM through pyspnego (what requests-ntlm, requests-kerberos and px build on), Digest
as RFC 7616 says, Basic last. NTLM and Negotiate authenticate the connection they run on,
so their rounds must stay on one connection (`connection_bound`); the CONNECT that follows
goes on that connection too. Sans-IO: it turns challenges into header values and never
sees a socket. Credentials never appear in what it raises.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

PREFERENCE = ("negotiate", "ntlm", "digest", "basic")
MAX_ROUNDS = 4  # Negotiate/NTLM take two; anything longer is a proxy saying no


class ProxyAuthError(Exception):
    """The proxy's challenge cannot be answered, or it refused the answer."""


@dataclass
class Challenge:
    scheme: str  # lower case
    params: dict[str, str] = field(default_factory=dict)
    token: str = ""  # NTLM / Negotiate: the base64 blob after the scheme


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM = re.compile(rf'\s*({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|{_TOKEN})\s*(,|$)')
_SCHEME = re.compile(rf"\s*({_TOKEN})(\s*,|\s*$|\s+)")
_TOKEN68 = re.compile(r"\s*([A-Za-z0-9+/._~-]+=*)\s*(,|$)")


def parse_challenges(values: list[str]) -> list[Challenge]:
    """Every challenge in these Proxy-Authenticate values (RFC 9110 §11.6.1: one header may
    hold several, and auth-params may quote commas)."""
    found: list[Challenge] = []
    for value in values:
        rest = value
        while rest.strip(", \t"):
            rest = rest.lstrip(", \t")
            m = _SCHEME.match(rest)
            if not m:
                break
            challenge = Challenge(m.group(1).lower())
            found.append(challenge)
            rest = rest[m.end() :]
            if "," in m.group(2) or not rest:
                continue  # a bare scheme: the next item is another challenge
            t = _TOKEN68.match(rest)
            if t and not _PARAM.match(rest):  # NTLM / Negotiate: one base64 blob
                challenge.token = t.group(1)
                rest = rest[t.end() :]
                continue
            while rest:
                p = _PARAM.match(rest)
                if not p:
                    break
                raw = p.group(2)
                challenge.params[p.group(1).lower()] = (
                    re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
                )
                rest = rest[p.end() :]
                nxt = _SCHEME.match(rest)
                if nxt and not _PARAM.match(rest):
                    break  # the next challenge starts here
    return found


class ProxyAuthenticator:
    """Answers one proxy's challenges for one CONNECT. `username` empty: only what the
    platform can do without a password (Negotiate with a Kerberos ticket or SSPI).
    `withheld` set: a proxy that gets no credentials at all (tunnel/proxy_trust.py), and why."""

    def __init__(self, username: str, password: str, proxy_host: str, withheld: str = "") -> None:
        self.username, self.password, self.proxy_host = username, password, proxy_host
        self.withheld = withheld
        self.scheme: str | None = None
        self.rounds = 0
        self._context: Any = None  # pyspnego's, for NTLM / Negotiate
        self._nc = 0
        self._why: list[str] = []  # why each offered scheme could not be answered
        self.new_cnonce = lambda: os.urandom(16).hex()  # Digest's client nonce

    @classmethod
    def for_proxy(cls, proxy) -> ProxyAuthenticator:
        """For an UpstreamProxy: its credentials, and whether it may have any."""
        return cls(proxy.username, proxy.password, proxy.host, proxy.credentials_withheld)

    @property
    def _scheme_name(self) -> str:
        return (self.scheme or "").upper()

    @property
    def connection_bound(self) -> bool:
        return self.scheme in ("ntlm", "negotiate")

    def restart(self) -> None:
        """A new connection: a connection-bound handshake starts over."""
        if self.connection_bound:
            self._context = None
            self.scheme = None

    def answer(self, values: list[str], method: str, target: str) -> str:
        """The Proxy-Authorization answering a 407 with these Proxy-Authenticate values."""
        self.rounds += 1
        if self.rounds > MAX_ROUNDS:
            raise ProxyAuthError("the proxy kept asking for authentication")
        challenges = {c.scheme: c for c in parse_challenges(values)}
        if self.withheld:  # before any token is made: a Negotiate token already carries a ticket
            names = ", ".join(_display(c) for c in challenges) or "unknown"
            raise ProxyAuthError(f"the proxy asks for {names} authentication and gets no credentials: {self.withheld}")
        if self._context is not None and self.scheme in challenges and challenges[self.scheme].token:
            return self._continue(challenges[self.scheme].token)
        self._refused_already(challenges)
        return self._first_answer(challenges, method, target)

    def _refused_already(self, challenges: dict[str, Challenge]) -> None:
        """A second 407 after an answer (not a stale Digest nonce, not a connection-bound
        handshake going on): the proxy said no to these credentials."""
        if (
            self.scheme is not None
            and not self.connection_bound
            and self.scheme in challenges
            and not _stale(challenges[self.scheme])
        ):
            raise ProxyAuthError(
                f"the proxy refused the {self.scheme.capitalize()} credentials for {self.username or '(none)'}"
            )
        if self._context is not None:
            raise ProxyAuthError(
                f"the proxy refused the {self._scheme_name} authentication of {self.username or 'the logged-in user'}"
            )

    def _first_answer(self, challenges: dict[str, Challenge], method: str, target: str) -> str:
        """The first scheme, in order of preference, that can be answered; else why none can."""
        self._why = []
        for scheme in (s for s in PREFERENCE if s in challenges):
            header = self._start(scheme, challenges[scheme], method, target)
            if header is not None:
                return header
        names = ", ".join(_display(c) for c in challenges) or "none"
        if not self.username:
            self._why.append("no username is configured (upstream_proxy: http://user:password@host:port)")
        raise ProxyAuthError(
            f"the proxy asks for {names} authentication and {'; '.join(self._why) or 'none of them can be answered'}"
        )

    def _start(self, scheme: str, challenge: Challenge, method: str, target: str) -> str | None:
        if scheme in ("negotiate", "ntlm"):
            context = self._spnego(scheme)
            if context is None:
                return None
            try:
                token = context.step()
            except Exception:  # no Kerberos ticket, no SSPI: another scheme may still do
                if scheme == "negotiate" and not self.username:
                    self._why.append(_no_single_sign_on())
                return None
            self.scheme, self._context = scheme, context
            return f"{'Negotiate' if scheme == 'negotiate' else 'NTLM'} {base64.b64encode(token).decode()}"
        if not self.username:
            return None
        self.scheme = scheme
        if scheme == "basic":
            return _basic(self.username, self.password)
        return self._digest(challenge, method, target)

    def _spnego(self, scheme: str):
        try:
            import spnego
        except ImportError:
            return None
        try:
            return spnego.client(
                self.username or None,
                self.password or None,
                hostname=self.proxy_host,
                service="HTTP",
                protocol="negotiate" if scheme == "negotiate" else "ntlm",
            )
        except Exception:  # the platform has no such provider
            return None

    def _continue(self, token: str) -> str:
        try:
            answer = self._context.step(base64.b64decode(token))
        except Exception as e:
            raise ProxyAuthError(
                f"the proxy's {self._scheme_name} challenge could not be answered ({type(e).__name__})"
            ) from None
        if not answer:
            raise ProxyAuthError(f"the proxy's {self._scheme_name} handshake ended without success")
        return f"{'Negotiate' if self.scheme == 'negotiate' else 'NTLM'} {base64.b64encode(answer).decode()}"

    def _digest(self, challenge: Challenge, method: str, uri: str) -> str | None:
        p = challenge.params
        algorithm = p.get("algorithm", "MD5")
        hashes = {"md5": hashlib.md5, "sha-256": hashlib.sha256}
        base = algorithm.lower().removesuffix("-sess")
        if base not in hashes or "nonce" not in p:
            return None

        def h(text: str) -> str:
            return hashes[base](text.encode()).hexdigest()

        realm, nonce = p.get("realm", ""), p["nonce"]
        qops = [q.strip() for q in p.get("qop", "").split(",") if q.strip()]
        if qops and "auth" not in qops:
            return None  # auth-int would need the (empty) body hashed: no proxy asks for it
        self._nc += 1
        nc, cnonce = f"{self._nc:08x}", self.new_cnonce()
        ha1 = h(f"{self.username}:{realm}:{self.password}")
        if algorithm.lower().endswith("-sess"):
            ha1 = h(f"{ha1}:{nonce}:{cnonce}")
        ha2 = h(f"{method}:{uri}")
        response = h(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}") if qops else h(f"{ha1}:{nonce}:{ha2}")
        fields = [
            f'username="{_quote(self.username)}"',
            f'realm="{_quote(realm)}"',
            f'nonce="{_quote(nonce)}"',
            f'uri="{_quote(uri)}"',
            f'response="{response}"',
            f"algorithm={algorithm}",
        ]
        if qops:
            fields += ["qop=auth", f"nc={nc}", f'cnonce="{cnonce}"']
        if "opaque" in p:
            fields.append(f'opaque="{_quote(p["opaque"])}"')
        return "Digest " + ", ".join(fields)


def _no_single_sign_on() -> str:
    """Why Negotiate could not go as the logged-in user, and what to do about it."""
    if os.name != "nt":
        try:
            import gssapi  # noqa: F401
            import krb5  # noqa: F401
        except ImportError:
            return (
                "Kerberos single sign-on needs the gssapi and krb5 packages (pip install gssapi krb5, or pipx inject "
                "fluidity gssapi krb5; on Debian they build against libkrb5-dev)"
            )
    return "the logged-in user has no Kerberos ticket for it (log in to the domain, or run kinit)"


def _display(scheme: str) -> str:
    return {"ntlm": "NTLM"}.get(scheme, scheme.capitalize())


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _stale(challenge: Challenge) -> bool:
    """Digest's stale=true: the nonce expired, the credentials were right: answer again."""
    return challenge.params.get("stale", "").lower() == "true"
