"""The hyperframe repr fix returns exactly what the original does."""

from hypothesis import given
from hypothesis import strategies as st

from tunnel import h2_speedups


@given(st.binary(max_size=64))
def test_same_text_as_the_original(data):
    assert h2_speedups._raw_data_repr(data) == h2_speedups._original(data)
    assert h2_speedups._raw_data_repr(memoryview(data)) == h2_speedups._original(memoryview(data))


def test_installed_by_the_mux():
    import hyperframe.frame

    import tunnel.mux  # noqa: F401

    assert hyperframe.frame._raw_data_repr is h2_speedups._raw_data_repr
    assert "<hex:" + "00" * 10 + "...>" in repr(hyperframe.frame.DataFrame(1, b"\x00" * 100_000))
