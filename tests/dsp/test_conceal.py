"""Loss concealment: repeat, fade, silence, recover; slots independent."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsp.conceal import LossConcealer


def frame(value: int, n: int = 160) -> np.ndarray:
    return np.full((1, n), value, np.int16)


def test_lost_frames_repeat_the_last_good_one_fading_to_silence() -> None:
    c = LossConcealer(1, 160, fade_frames=3)
    c.process(frame(1000), np.array([False]))
    got = [int(c.process(frame(0), np.array([True]))[0, 0]) for _ in range(5)]
    assert got == [1000, 500, 250, 0, 0]


def test_good_frames_pass_through_and_recovery_is_immediate() -> None:
    c = LossConcealer(1, 160)
    c.process(frame(1000), np.array([False]))
    c.process(frame(0), np.array([True]))
    out = c.process(frame(-300), np.array([False]))
    assert (out == -300).all()
    assert int(c.process(frame(0), np.array([True]))[0, 0]) == -300  # new last good frame


def test_slots_are_independent_and_reset_forgets() -> None:
    c = LossConcealer(4, 8)
    c.process(
        np.stack([frame(100, 8)[0], frame(200, 8)[0]]),
        np.array([False, False]),
        slots=np.array([3, 1]),
    )
    out = c.process(np.zeros((2, 8), np.int16), np.array([True, True]), slots=np.array([1, 3]))
    assert out[:, 0].tolist() == [200, 100]
    c.reset(3)
    out = c.process(np.zeros((1, 8), np.int16), np.array([True]), slots=np.array([3]))
    assert out[0, 0] == 0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=30))
def test_output_never_louder_than_the_last_good_frame(pattern: list[bool]) -> None:
    c = LossConcealer(1, 16)
    rng = np.random.default_rng(len(pattern))
    last = np.zeros(16, np.int16)
    for lost in pattern:
        x = rng.integers(-32768, 32767, (1, 16), dtype=np.int16)
        out = c.process(x, np.array([lost]))
        if lost:
            assert (np.abs(out.astype(np.int32)) <= np.abs(last.astype(np.int32))).all()
        else:
            np.testing.assert_array_equal(out, x)
            last = x[0]


def test_bad_shapes_are_named() -> None:
    c = LossConcealer(2, 160)
    with pytest.raises(ValueError, match="frames"):
        c.process(np.zeros((1, 80), np.int16), np.array([True]))
    with pytest.raises(ValueError, match="lost and slots"):
        c.process(np.zeros((1, 160), np.int16), np.array([True, False]))
