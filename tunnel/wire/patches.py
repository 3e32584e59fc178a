"""Every change Fluidity makes to a library's code at run time, through one registry.

A `Patch` declares what it replaces (an attribute of a class or module, and our function
for it) and the source fingerprint of the original it was written against, and also the
library code it relies on without replacing it. `install` takes a patch all or nothing:
every fingerprint must match (or ours be in place already), else nothing of it is touched
and the reason is kept. `remove` puts back exactly what was there. `report` says which
patches are active and which were refused, and why: `fluidity doctor` and each role's start
line print it. Registering a patch (at import) changes nothing; the taps install at start.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ABSENT",
    "OFF_SWITCH",
    "PATCH_MODULES",
    "REGISTRY",
    "Patch",
    "Registry",
    "Reliance",
    "Replacement",
    "registry",
    "source_fingerprint",
]

ABSENT = "absent"  # a Replacement's `written_against` for a name the library lacks and should have
OFF_SWITCH = "FLUIDITY_LIBRARY_SPEEDUPS"  # =off: every library as shipped (a baseline to measure against)
_MISSING = object()  # an attribute inherited, not the owner's own: removed again by deleting it


def source_fingerprint(code: object) -> str | None:
    """The first 16 hex digits of the sha256 of a function's dedented source: what a patch
    compares against the version it was written for (None without source)."""
    try:
        source = textwrap.dedent(inspect.getsource(code))  # type: ignore[arg-type]
    except (OSError, TypeError):
        return None
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def _name(owner: Any, attribute: str) -> str:
    module = getattr(owner, "__module__", None) if inspect.isclass(owner) else None
    return f"{module + '.' if module else ''}{getattr(owner, '__name__', owner)}.{attribute}"


@dataclass(frozen=True)
class Reliance:
    """Library code a patch calls or counts on, left as it is: it must be the version known."""

    owner: Any
    attribute: str
    written_against: str

    @property
    def name(self) -> str:
        return _name(self.owner, self.attribute)

    def mismatch(self) -> str | None:
        found = source_fingerprint(getattr(self.owner, self.attribute, None))
        return None if found == self.written_against else f"{self.name} is not the version it was written against"


@dataclass(frozen=True)
class Replacement(Reliance):
    """`owner.attribute` becomes `ours`; the original is kept to be put back."""

    ours: Any = None

    def mismatch(self) -> str | None:
        if getattr(self.owner, self.attribute, None) is self.ours:
            return None
        if self.written_against == ABSENT:
            return f"{self.name} exists already" if self.attribute in vars(self.owner) else None
        return super().mismatch()


@dataclass(frozen=True)
class Patch:
    name: str  # what it is for, as the report says it
    why: str  # one line: what it saves
    replaces: tuple[Replacement, ...] = ()
    relies_on: tuple[Reliance, ...] = ()  # a subclass's overridden methods go here: nothing is replaced
    platforms: tuple[str, ...] = ()  # sys.platform prefixes it was tried on; () for every platform
    also_needs: Callable[[], str | None] | None = None  # any other check: the reason it does not fit, or None
    needed: Callable[[], bool] | None = None  # whether what it mends exists here at all; None: always

    def needed_here(self) -> bool:
        """For this platform and this library at all (a fix for Windows is not needed on Linux)."""
        platform_ok = not self.platforms or sys.platform.startswith(self.platforms)
        return platform_ok and (self.needed is None or self.needed())

    def unfit(self) -> str | None:
        """Why it cannot be installed here, or None."""
        if self.platforms and not sys.platform.startswith(self.platforms):
            return f"not tried on {sys.platform} (only {', '.join(self.platforms)})"
        if not self.needed_here():
            return "not needed here"
        for part in (*self.replaces, *self.relies_on):
            wrong = part.mismatch()
            if wrong:
                return wrong
        return self.also_needs() if self.also_needs is not None else None


class Registry:
    def __init__(self) -> None:
        self._patches: dict[str, Patch] = {}
        self._originals: dict[str, list[tuple[Replacement, Any]]] = {}  # active patches: what they replaced
        self._refused: dict[str, str] = {}

    def register(self, patch: Patch) -> Patch:
        self._patches.setdefault(patch.name, patch)
        return self._patches[patch.name]

    def install(self, name: str) -> bool:
        """All of the patch or none of it; False (with its reason kept) when it does not fit."""
        patch = self._patches[name]
        if self.active(name):
            return True
        why = patch.unfit()
        if why is not None:
            self._refused[name] = why
            return False
        self._refused.pop(name, None)
        kept = []
        for part in patch.replaces:
            kept.append((part, vars(part.owner).get(part.attribute, _MISSING)))
            setattr(part.owner, part.attribute, part.ours)
        self._originals[name] = kept
        return True

    def reset(self, name: str) -> None:
        """Removed, and its refusal forgotten: as if never tried (for tests)."""
        self.remove(name)
        self._refused.pop(name, None)

    def remove(self, name: str, why: str = "") -> None:
        """Put back exactly what the patch replaced; `why` is reported while it stays off."""
        for part, original in reversed(self._originals.pop(name, [])):
            if getattr(part.owner, part.attribute, None) is not part.ours:
                continue  # someone else has put something there since: theirs stays
            if original is _MISSING:
                delattr(part.owner, part.attribute)
            else:
                setattr(part.owner, part.attribute, original)
        if why:
            self._refused[name] = why

    def install_all(self) -> dict[str, bool]:
        return {name: self.install(name) for name in self._patches}

    def remove_all(self, why: str = "") -> None:
        for name in list(self._patches):
            self.remove(name, why)

    def active(self, name: str) -> bool:
        """Installed, and still in place (what a patch replaces is ours there, as this looks now)."""
        patch = self._patches[name]
        return name in self._originals and all(
            getattr(part.owner, part.attribute, None) is part.ours for part in patch.replaces
        )

    def refusal(self, name: str) -> str | None:
        """Why the patch is off, once an install was refused or it was removed with a reason."""
        return None if self.active(name) else self._refused.get(name)

    def names(self) -> list[str]:
        return list(self._patches)

    def patches(self) -> list[Patch]:
        return list(self._patches.values())

    def snapshot(self) -> dict[str, tuple[Any, ...]]:
        """What every registered patch's attributes are now (their owners' own): tests compare
        it before and after, and `restore` puts one back."""
        return {
            name: tuple(vars(part.owner).get(part.attribute, _MISSING) for part in patch.replaces)
            for name, patch in self._patches.items()
        }

    def restore(self, snapshot: dict[str, tuple[Any, ...]]) -> list[str]:
        """Put the attributes back as `snapshot` had them; the names of the patches that differed."""
        differed = []
        for name, values in snapshot.items():
            if self.snapshot().get(name) == values:
                continue
            differed.append(name)
            for part, value in zip(self._patches[name].replaces, values, strict=True):
                if value is _MISSING:
                    if part.attribute in vars(part.owner):
                        delattr(part.owner, part.attribute)
                else:
                    setattr(part.owner, part.attribute, value)
        return differed

    def report(self) -> list[str]:
        """One line a patch: active, with what it replaced or relies on; or off, and why."""
        lines = []
        for name, patch in self._patches.items():
            if self.active(name):
                parts = [p.name for p in patch.replaces] or [f"overrides of {p.name}" for p in patch.relies_on]
                lines.append(f"{name}: active ({', '.join(parts)})")
            else:
                lines.append(f"{name}: off ({self._refused.get(name, 'not installed')})")
        return lines


REGISTRY = Registry()

# The modules that each register one patch (docs/design.md lists the same; a test holds both to the tree).
PATCH_MODULES = (
    "tunnel.wire.eager_connect",
    "tunnel.wire.eager_write",
    "tunnel.wire.filepath_windows",
    "tunnel.wire.h2_speedups",
    "tunnel.wire.tls_batching",
)


def registry() -> Registry:
    """The registry with every patch registered (importing a patch module installs nothing)."""
    for module in PATCH_MODULES:
        importlib.import_module(module)
    return REGISTRY
