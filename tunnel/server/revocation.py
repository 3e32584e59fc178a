"""A deny list of client certificates, reloaded while the server runs.

One entry a line: a certificate serial number in hex (`3a:5f:...` or `3a5f...`) or a
SHA-256 fingerprint (`sha256:ab12...`, colons optional); `#` starts a comment. The file
is re-read when it changes (checked every few seconds); connections whose certificate
has just been listed are closed at once. A file that becomes unreadable or malformed
keeps the previous list in force and says so in the log.
"""

from __future__ import annotations

import hashlib
import os
import re

from twisted.logger import Logger

log = Logger(namespace="fluidity.server")

_HEX = re.compile(r"^[0-9a-f]+$")


class RevocationError(ValueError):
    pass


def parse(text: str, where: str) -> tuple[frozenset[int], frozenset[str]]:
    serials, fingerprints = set(), set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip().lower()
        if not line:
            continue
        if line.startswith("sha256:"):
            digest = line[7:].replace(":", "")
            if len(digest) != 64 or not _HEX.match(digest):
                raise RevocationError(f"{where}:{number}: a SHA-256 fingerprint has 64 hex digits, got {raw.strip()!r}")
            fingerprints.add(digest)
            continue
        digits = line.replace(":", "")
        if not _HEX.match(digits):
            raise RevocationError(
                f"{where}:{number}: expected a hex serial number or sha256:<fingerprint>, got {raw.strip()!r}"
            )
        serials.add(int(digits, 16))
    return frozenset(serials), frozenset(fingerprints)


def fingerprint(cert) -> str:
    """SHA-256 of the DER certificate (pyOpenSSL X509)."""
    from OpenSSL import crypto

    return hashlib.sha256(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)).hexdigest()


class RevocationList:
    def __init__(self, path: str) -> None:
        self.path = path
        self.serials: frozenset[int] = frozenset()
        self.fingerprints: frozenset[str] = frozenset()
        self._stamp: tuple[object, ...] | None = None
        if path:
            self._read(initial=True)

    def __len__(self) -> int:
        return len(self.serials) + len(self.fingerprints)

    def revoked(self, cert) -> bool:
        if cert is None or not self:
            return False
        return cert.get_serial_number() in self.serials or fingerprint(cert) in self.fingerprints

    def refresh(self) -> bool:
        """Re-read the file if it changed; True when the list changed."""
        if not self.path:
            return False
        try:
            info = os.stat(self.path)
            stamp: tuple[object, ...] = (info.st_mtime_ns, info.st_size, info.st_ino)
        except OSError as e:
            stamp = ("missing", e.errno)
        if stamp == self._stamp:
            return False
        before = (self.serials, self.fingerprints)
        self._read(initial=False)
        return (self.serials, self.fingerprints) != before

    def _read(self, initial: bool) -> None:
        try:
            info = os.stat(self.path)
            with open(self.path, encoding="utf-8") as f:
                self.serials, self.fingerprints = parse(f.read(), self.path)
            self._stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        except (OSError, UnicodeDecodeError, RevocationError) as e:
            if initial:
                raise RevocationError(f"revoked_file: {e}") from None
            self._stamp = ("missing", getattr(e, "errno", None))
            log.warn(
                "revoked_file could not be reloaded ({error}); the previous list of {n} entries stays in force",
                error=str(e),
                n=len(self),
            )
            return
        if not initial:
            log.info("revoked_file reloaded: {n} entries", n=len(self))
