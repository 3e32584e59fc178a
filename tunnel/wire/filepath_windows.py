"""Twisted's filepath on Windows under CPython 3.12: the name its reserved-name check needs.

Twisted 26.10's `twisted/python/filepath.py` imports `PureWindowsPath` only when
`sys.version_info <= (3, 12)`, false for every 3.12.x, while `_isreserved` (Windows only) calls it
on every Python below 3.13: on CPython 3.12 for Windows every `FilePath.child()` raises NameError,
and twistd dies scanning its plugins before any of ours is imported. The patch gives the module
the name it lacks, only where `_isreserved` is the one written against (fingerprinted) and the
name is missing; anywhere else it changes nothing. `tunnel.ops.twistd_windows` installs it before
twistd starts. upstream/twisted-filepath-windows-312.md is the report.
"""

from __future__ import annotations

import pathlib
from types import ModuleType

from twisted.python import filepath

from tunnel.wire.patches import ABSENT, REGISTRY, Patch, Registry, Reliance, Replacement

__all__ = ["PATCH", "mend"]

# sha256 (first 16 hex digits) of `_isreserved` as Twisted 26.10.0 defines it for Windows before 3.13.
WRITTEN_AGAINST = "5bfd7830b919c79c"
MISSING = "PureWindowsPath"


def _patch_for(module: ModuleType) -> Patch:
    return Patch(
        "Twisted filepath on Windows",
        "twistd starts on CPython 3.12 for Windows (its plugin scan raised NameError: PureWindowsPath)",
        replaces=(Replacement(module, MISSING, ABSENT, ours=pathlib.PureWindowsPath),),
        relies_on=(Reliance(module, "_isreserved", WRITTEN_AGAINST),),
        needed=lambda: hasattr(module, "_isreserved"),  # Twisted defines it on Windows only
    )


PATCH = REGISTRY.register(_patch_for(filepath))


def mend(module: ModuleType = filepath) -> bool:
    """Whether it gave `module` (Twisted's filepath, or a copy of it as built on Windows) the
    `PureWindowsPath` its `_isreserved` calls: only when missing and `_isreserved` is the one known."""
    if MISSING in vars(module):
        return False  # imported as intended (before 3.12, a Twisted that fixed it), or mended already
    if module is filepath:
        registry, name = REGISTRY, PATCH.name
    else:
        registry = Registry()
        name = registry.register(_patch_for(module)).name
    return registry.install(name)
