"""Mixing: channel order, zero-fill, saturation, validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dsp.mix import MixType, channels, mix


def test_stereo_puts_caller_left_and_heard_audio_right() -> None:
    read = np.array([[1, 2, 3], [10, 20, 30]], np.int16)
    write = np.array([[-1, -2, -3], [-10, -20, -30]], np.int16)
    out = mix("stereo", read, write)
    assert out.tolist() == [[1, -1, 2, -2, 3, -3], [10, -10, 20, -20, 30, -30]]
    assert channels(MixType.STEREO) == 2


def test_missing_side_is_zero_filled() -> None:
    read = np.array([[5, 6]], np.int16)
    assert mix(MixType.STEREO, read).tolist() == [[5, 0, 6, 0]]
    assert mix(MixType.MIXED, read).tolist() == [[5, 6]]


def test_mono_is_the_caller_only() -> None:
    read = np.array([[7, 8]], np.int16)
    assert mix("mono", read, np.array([[100, 100]], np.int16)).tolist() == [[7, 8]]


def test_mixed_saturates_instead_of_wrapping() -> None:
    read = np.array([[30000, -30000, 100]], np.int16)
    write = np.array([[30000, -30000, -50]], np.int16)
    assert mix("mixed", read, write).tolist() == [[32767, -32768, 50]]


pcm = arrays(np.int16, st.tuples(st.integers(1, 4), st.integers(1, 64)))


@given(pcm)
def test_mixed_equals_clamped_integer_sum(read: np.ndarray) -> None:
    write = read[::-1].copy()
    expected = np.clip(read.astype(np.int64) + write, -32768, 32767)
    np.testing.assert_array_equal(mix("mixed", read, write), expected)


def test_bad_input_names_the_field_and_allowed_values() -> None:
    read = np.zeros((1, 4), np.int16)
    with pytest.raises(
        ValueError, match="mixType: must be one of mono, stereo, mixed, got 'surround'"
    ):
        mix("surround", read)
    with pytest.raises(ValueError, match="write: shape"):
        mix("stereo", read, np.zeros((1, 5), np.int16))
    with pytest.raises(ValueError, match="read: dtype"):
        mix("mono", np.zeros((1, 4), np.float32))  # type: ignore[arg-type]
