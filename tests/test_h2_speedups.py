"""The hyperframe repr fix returns exactly what the original does, and installs only over the
hyperframe it was written against (one patch of tunnel/wire/patches.py)."""

import hyperframe.frame
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel.wire import h2_speedups

_ORIGINAL = vars(hyperframe.frame)["_raw_data_repr"]  # hyperframe's own (no test leaves it patched)
NAME = h2_speedups.PATCH.name


@given(st.binary(max_size=64))
def test_same_text_as_the_original(data):
    assert _ORIGINAL is not h2_speedups._raw_data_repr
    assert h2_speedups._raw_data_repr(data) == _ORIGINAL(data)
    assert h2_speedups._raw_data_repr(memoryview(data)) == _ORIGINAL(memoryview(data))


@pytest.mark.processes
def test_installed_when_a_role_starts_and_not_on_import():
    """Both roles install it where they install eager writes (the taps), never on import."""
    import subprocess
    import sys

    code = (
        "import hyperframe.frame as f; before = f._raw_data_repr; import tunnel.wire.mux, tunnel.taps; "
        "assert f._raw_data_repr is before, 'patched on import'; tunnel.taps._speed_up_writes(); "
        "from tunnel.wire import h2_speedups; assert f._raw_data_repr is h2_speedups._raw_data_repr; "
        "print(repr(f.DataFrame(1, b'\\x00' * 100_000)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "<hex:" + "00" * 10 + "...>" in done.stdout


def test_left_alone_when_hyperframe_has_no_such_function(monkeypatch):
    monkeypatch.delattr(hyperframe.frame, "_raw_data_repr")
    assert not h2_speedups.install()
    assert not hasattr(hyperframe.frame, "_raw_data_repr")
    assert "_body_repr" not in vars(hyperframe.frame.DataFrame)  # all or nothing


def test_left_alone_when_hyperframe_formats_differently(monkeypatch):
    def other(data):
        return "<bytes>"

    monkeypatch.setattr(hyperframe.frame, "_raw_data_repr", other)
    assert not h2_speedups.install()
    assert hyperframe.frame._raw_data_repr is other
    assert "_body_repr" not in vars(hyperframe.frame.DataFrame)


@pytest.mark.processes
def test_the_server_starts_when_hyperframe_changed(tmp_path):
    """Before, a missing function was an AttributeError on import: no server at all."""
    import subprocess
    import sys

    code = (
        "import hyperframe.frame as f; del f._raw_data_repr; import tunnel.taps; tunnel.taps._speed_up_writes(); "
        "print('imported')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.stdout.strip() == b"imported", done.stderr


_FALLBACK = hyperframe.frame.Frame._body_repr  # what a DATA frame's repr used, serialising the frame


@given(st.binary(max_size=64), st.one_of(st.none(), st.integers(min_value=0, max_value=255)), st.booleans())
def test_a_data_frame_repr_is_the_same_text_without_serialising_the_payload(data, pad, viewed):
    frame = hyperframe.frame.DataFrame(1, memoryview(data) if viewed else data)
    if pad is not None:
        frame.flags.add("PADDED")
        frame.pad_length = pad
    expected = _FALLBACK(frame)
    assert h2_speedups._data_body_repr(frame) == expected


def test_a_received_data_frames_repr_copies_nothing_of_its_payload(patched):
    patched(NAME)
    frame = hyperframe.frame.DataFrame(1, b"\x01" * 300_000)
    frame.serialize_body = None  # the original builds the repr by serialising the whole frame
    assert repr(frame) == "DataFrame(stream_id=1, flags=[]): <hex:01010101010101010101...>"


def test_a_data_frame_repr_is_left_alone_when_hyperframe_gives_data_frames_their_own(monkeypatch):
    def own(self):
        return "own"

    monkeypatch.setattr(hyperframe.frame.DataFrame, "_body_repr", own, raising=False)
    assert not h2_speedups.install()
    assert hyperframe.frame.DataFrame._body_repr is own
    assert hyperframe.frame._raw_data_repr is _ORIGINAL


def test_a_data_frame_repr_is_left_alone_when_the_fallback_formats_differently(monkeypatch):
    assert "_body_repr" not in vars(hyperframe.frame.DataFrame)  # inherited, as hyperframe ships it
    monkeypatch.setattr(hyperframe.frame.Frame, "_body_repr", lambda self: "other")
    assert not h2_speedups.install()
    assert "_body_repr" not in vars(hyperframe.frame.DataFrame)
