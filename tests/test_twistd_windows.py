"""The mend of Twisted's filepath for CPython 3.12 on Windows (tunnel.ops.twistd_windows).

Here, Twisted's own filepath.py is executed as it runs on Windows under CPython 3.12 (sys.platform
and sys.version_info seen as there while the module body runs), which reproduces the NameError;
scripts/windows-check shows the same on the real embeddable CPython 3.12 under Wine."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from twisted.python import filepath

from tunnel.ops.twistd_windows import mend


def filepath_as_on_windows_312(monkeypatch, edited: Path | None = None, edit=None) -> types.ModuleType:
    """Twisted's filepath module as CPython 3.12 on Windows builds it; with `edit`, from an edited
    copy written to `edited` (where inspect finds its source)."""
    path = filepath.__file__
    if edit is not None and edited is not None:
        edited.write_text(edit(Path(path).read_text()))
        path = str(edited)
    module = types.ModuleType("filepath_on_windows")
    module.__file__ = path
    with monkeypatch.context() as m:
        m.setattr(sys, "platform", "win32")
        m.setattr(sys, "version_info", (3, 12, 9, "final", 0))
        exec(compile(Path(path).read_text(), path, "exec"), module.__dict__)
    return module


def test_twisted_as_locked_fails_on_windows_312_and_the_mend_fixes_it(monkeypatch, tmp_path):
    module = filepath_as_on_windows_312(monkeypatch)
    with pytest.raises(NameError, match="PureWindowsPath"):
        module.FilePath(str(tmp_path)).child("plugins")
    assert mend(module) is True
    assert module.FilePath(str(tmp_path)).child("plugins").path == str(tmp_path / "plugins")
    with pytest.raises(module.InsecurePath, match="reserved"):  # the check itself now runs
        module.FilePath(str(tmp_path)).child("NUL")
    assert mend(module) is False  # once


def test_it_leaves_anything_else_alone(monkeypatch, tmp_path):
    """Fails closed: a Twisted whose `_isreserved` differs, one that imports the name, and this
    platform's module (no `_isreserved` at all) are not touched."""
    changed = filepath_as_on_windows_312(
        monkeypatch,
        tmp_path / "changed.py",
        lambda s: s.replace("PureWindowsPath(fsdecode(x)).is_reserved()", "PureWindowsPath(x).is_reserved()"),
    )
    assert mend(changed) is False and "PureWindowsPath" not in vars(changed)
    fixed = filepath_as_on_windows_312(
        monkeypatch,
        tmp_path / "fixed.py",
        lambda s: s.replace("if sys.version_info <= (3, 12):", "if sys.version_info < (3, 13):"),
    )
    before = fixed.PureWindowsPath
    assert mend(fixed) is False and fixed.PureWindowsPath is before
    assert mend(filepath) is False
