"""The hyperframe repr fix returns exactly what the original does, and installs only then."""

import hyperframe.frame
from hypothesis import given
from hypothesis import strategies as st

from tunnel.wire import h2_speedups

@given(st.binary(max_size=64))
def test_same_text_as_the_original(data):
    import tunnel.wire.mux  # noqa: F401  (installs it, keeping hyperframe's own in _replaced)

    original = h2_speedups._replaced
    assert h2_speedups._raw_data_repr(data) == original(data)
    assert h2_speedups._raw_data_repr(memoryview(data)) == original(memoryview(data))


def test_installed_by_the_mux():
    import tunnel.wire.mux  # noqa: F401

    assert hyperframe.frame._raw_data_repr is h2_speedups._raw_data_repr
    assert "<hex:" + "00" * 10 + "...>" in repr(hyperframe.frame.DataFrame(1, b"\x00" * 100_000))


def test_left_alone_when_hyperframe_has_no_such_function(monkeypatch):
    monkeypatch.delattr(hyperframe.frame, "_raw_data_repr")
    assert not h2_speedups.install()
    assert not hasattr(hyperframe.frame, "_raw_data_repr")


def test_left_alone_when_hyperframe_formats_differently(monkeypatch):
    def other(data):
        return "<bytes>"

    monkeypatch.setattr(hyperframe.frame, "_raw_data_repr", other)
    assert not h2_speedups.install()
    assert hyperframe.frame._raw_data_repr is other


def test_the_server_starts_when_hyperframe_changed(tmp_path):
    """Before, a missing function was an AttributeError on import: no server at all."""
    import subprocess
    import sys

    code = "import hyperframe.frame as f; del f._raw_data_repr; import tunnel.wire.mux; print('imported')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.stdout.strip() == b"imported", done.stderr
