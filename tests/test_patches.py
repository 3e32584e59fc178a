"""The one registry of library patches (tunnel/wire/patches.py): each patch installs all or
nothing over the exact source it was written against, is removed to exactly what was there,
and the report says what is active and why the rest is off."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from tunnel.wire import patches
from tunnel.wire.patches import Patch, Registry, Reliance, Replacement, source_fingerprint


def _original(self):
    return "the library's"


def _other_original(self):
    return "the library's other"


def _ours(self):
    return "ours"


def _library():
    """A class and a module as a library ships them, made afresh for each test."""

    class Library:
        method = _original
        other = _other_original

    module = types.ModuleType("library")
    module.function = _original
    return Library, module


def _patch(library, module, *, against: str | None = None, platforms: tuple[str, ...] = ()) -> Patch:
    return Patch(
        "two methods and a function",
        "for the tests",
        replaces=(
            Replacement(library, "method", against or source_fingerprint(_original), ours=_ours),
            Replacement(library, "other", source_fingerprint(_other_original), ours=_ours),
            Replacement(module, "function", source_fingerprint(_original), ours=_ours),
        ),
        platforms=platforms,
    )


def test_a_patch_installs_whole_reports_itself_and_is_removed_to_exactly_what_was_there():
    library, module = _library()
    registry = Registry()
    patch = registry.register(_patch(library, module))
    assert registry.report() == ["two methods and a function: off (not installed)"]
    assert registry.install(patch.name) and registry.active(patch.name)
    assert library.method is library.other is module.function is _ours
    [line] = registry.report()
    assert line.startswith("two methods and a function: active (") and ".Library.method" in line
    assert "library.function" in line
    registry.remove(patch.name)
    assert library.method is _original and library.other is _other_original and module.function is _original
    assert not registry.active(patch.name)


def test_a_patch_written_against_other_code_changes_nothing_and_says_which():
    library, module = _library()
    registry = Registry()
    patch = registry.register(_patch(library, module, against="0000000000000000"))
    assert not registry.install(patch.name)
    assert library.method is _original and library.other is _other_original and module.function is _original
    [line] = registry.report()
    assert "off (" in line and "Library.method is not the version it was written against" in line


def test_one_changed_part_keeps_every_part_off():
    library, module = _library()
    library.other = lambda self: "a new release's"
    registry = Registry()
    patch = registry.register(_patch(library, module))
    assert not registry.install(patch.name)
    assert library.method is _original and module.function is _original  # not one of three


def test_a_platform_it_was_not_tried_on_leaves_it_off():
    library, module = _library()
    registry = Registry()
    patch = registry.register(_patch(library, module, platforms=("no-such-platform",)))
    assert not registry.install(patch.name)
    assert f"not tried on {sys.platform}" in registry.refusal(patch.name)


def test_an_inherited_attribute_is_removed_again_rather_than_copied_down():
    class Base:
        method = _original

    class Child(Base):
        pass

    registry = Registry()
    patch = registry.register(
        Patch("child", "", replaces=(Replacement(Child, "method", source_fingerprint(_original), ours=_ours),))
    )
    assert registry.install(patch.name) and Child.method is _ours and Base.method is _original
    registry.remove(patch.name)
    assert "method" not in vars(Child) and Child.method is _original


def test_a_subclass_s_overrides_are_checked_but_nothing_is_replaced():
    library, _ = _library()
    registry = Registry()
    fits = registry.register(
        Patch("overrides", "", relies_on=(Reliance(library, "method", source_fingerprint(_original)),))
    )
    assert registry.install(fits.name) and library.method is _original
    assert registry.report() == [f"overrides: active (overrides of {library.__module__}.Library.method)"]
    registry.remove(fits.name, "switched off")
    assert registry.refusal(fits.name) == "switched off" and not registry.active(fits.name)


def test_something_else_put_there_since_is_not_undone_by_removal():
    library, module = _library()
    registry = Registry()
    patch = registry.register(_patch(library, module))
    registry.install(patch.name)

    def theirs(self):
        return "someone else's"

    library.method = theirs
    assert not registry.active(patch.name)  # as it is now, not as it was installed
    registry.remove(patch.name)
    assert library.method is theirs and module.function is _original


def test_every_patch_of_fluidity_fits_the_locked_libraries_and_comes_off_again():
    registry = patches.registry()
    before = registry.snapshot()
    try:
        for name in (patch.name for patch in registry.patches() if patch.needed_here()):
            was_active = registry.active(name)
            assert registry.install(name), f"{name}: {registry.refusal(name)} (re-measure and re-fingerprint it)"
            if not was_active:
                registry.remove(name)
    finally:
        assert registry.snapshot() == before


def test_every_module_with_a_patch_is_registered_and_the_design_doc_lists_them():
    """No patch can be added beside the registry, nor the doc fall behind it."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    defining = sorted(
        "tunnel." + str(path.relative_to(root / "tunnel").with_suffix("")).replace("/", ".")
        for path in (root / "tunnel").rglob("*.py")
        if "\nPATCH = REGISTRY.register(" in path.read_text()
    )
    assert defining == sorted(patches.PATCH_MODULES)
    design = (root / "docs" / "design.md").read_text()
    for name in patches.registry().names():
        assert f"`{name}`" in design, f"docs/design.md does not list the patch {name!r}"
    for module in patches.PATCH_MODULES:
        assert f"`{module.rsplit('.', 1)[1]}`" in design


@pytest.mark.processes
def test_a_role_says_at_start_which_patches_are_active():
    code = "import tunnel.taps as t; t._speed_up_writes()"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from twisted.logger import globalLogBeginner, textFileLogObserver; import sys; "
            f"globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)]); {code}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for patch in patches.registry().patches():
        state = "active" if patch.needed_here() else "off (not needed here)"
        assert f"library patch: {patch.name}: {state}" in done.stdout, done.stdout
    off = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from twisted.logger import globalLogBeginner, textFileLogObserver; import sys; "
            f"globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)]); {code}; "
            "from tunnel.wire import patches; print(patches.registry().report())",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**__import__("os").environ, "FLUIDITY_LIBRARY_SPEEDUPS": "off"},
    )
    assert "FLUIDITY_LIBRARY_SPEEDUPS=off" in off.stdout and ": active" not in off.stdout, off.stdout
