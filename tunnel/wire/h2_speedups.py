"""Two performance fixes for the HTTP/2 libraries, identical in behaviour.

h2 builds `repr(frame)` for a trace log line on every frame it receives, even when no
logger listens. hyperframe's repr of a DATA frame serialises the whole frame (a copy of
its payload, up to 256 KiB here) and hex-encodes all of it, to keep the first 20 hex
digits. On a bulk transfer that was a seventh of the agent's CPU.

* `_raw_data_repr` returns exactly hyperframe's text from the first 11 bytes;
* `_data_body_repr`, given to `DataFrame`, builds the same text from the frame's first
  11 bytes (pad length, payload, padding) instead of serialising all of it.

(Offered upstream: h2 should format lazily, hyperframe slice before it copies or
hex-encodes; see the README.) Each replaces or adds to hyperframe's private code, so each
fails closed: it installs only when what it replaces exists and gives the same text as
this on sample frames. Otherwise hyperframe is left as it is, a little slower.
"""

from __future__ import annotations

import binascii

import hyperframe.frame

_replaced = None  # hyperframe's own function, once install() has replaced it
_SAMPLES = (b"", b"\x00", bytes(range(10)), bytes(range(11)), bytes(range(12)), bytes(range(256)) * 4)


def _raw_data_repr(data) -> str:
    if not data:
        return "None"
    r = binascii.hexlify(bytes(data[:11])).decode("ascii")
    if len(r) > 20:
        r = r[:20] + "..."
    return "<hex:" + r + ">"


def installable() -> bool:
    original = getattr(hyperframe.frame, "_raw_data_repr", None)
    if original is _raw_data_repr:
        return True
    if not callable(original):
        return False
    try:
        return all(
            original(sample) == _raw_data_repr(sample)
            and original(memoryview(sample)) == _raw_data_repr(memoryview(sample))
            for sample in _SAMPLES
        )
    except Exception:
        return False


def _data_body_repr(self) -> str:
    """`Frame._body_repr` of a DATA frame, from its first 11 bytes only."""
    head = self.serialize_padding_data() + bytes(self.data[:11])
    if len(head) < 11 and self.pad_length:
        head += b"\0" * min(self.pad_length, 11 - len(head))
    return hyperframe.frame._raw_data_repr(head[:11])


def _sample_frames() -> list:
    frames = []
    for data in _SAMPLES:
        for pad in (None, 0, 1, 5, 20):
            frame = hyperframe.frame.DataFrame(1, data)
            if pad is not None:
                frame.flags.add("PADDED")
                frame.pad_length = pad
            frames.append(frame)
            viewed = hyperframe.frame.DataFrame(1, memoryview(data))  # type: ignore[arg-type]  # as h2 may
            frames.append(viewed)
    return frames


def data_repr_installable() -> bool:
    """DATA frames fall back on `Frame._body_repr`, which gives the text this gives."""
    frame_class = hyperframe.frame.DataFrame
    current = vars(frame_class).get("_body_repr")
    if current is _data_body_repr:
        return True
    if current is not None or not callable(getattr(frame_class, "_body_repr", None)):
        return False
    try:
        return all(_data_body_repr(frame) == frame._body_repr() for frame in _sample_frames())
    except Exception:
        return False


def install() -> bool:
    """Install both; False (and hyperframe untouched by what did not fit) if it changed."""
    global _replaced
    if not installable():
        return False
    if hyperframe.frame._raw_data_repr is not _raw_data_repr:
        _replaced = hyperframe.frame._raw_data_repr
        hyperframe.frame._raw_data_repr = _raw_data_repr
    if not data_repr_installable():
        return False
    hyperframe.frame.DataFrame._body_repr = _data_body_repr  # type: ignore[method-assign]
    return True
