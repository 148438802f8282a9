"""Tests for dsp/tones.py: frequencies, levels, placement, beep, click-free streaming."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from dsp.tones import (
    BEEP_HZ,
    DTMF_HIGH_HZ,
    DTMF_KEYS,
    DTMF_LOW_HZ,
    ToneSegment,
    ToneStream,
    amplitude_from_dbfs,
    beep,
    dtmf_frequencies,
    dtmf_tone,
    render,
    render_digits,
    tone,
)

FULL_SCALE_SINE_POWER = 32767.0**2 / 2


def peak_frequencies(x: NDArray[np.int16], rate: int, count: int) -> list[float]:
    """The ``count`` strongest spectral peaks (Hz), interpolated, lowest first."""
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    bins = np.fft.rfftfreq(len(x), 1.0 / rate)
    peaks = []
    work = spectrum.copy()
    for _ in range(count):
        k = int(work.argmax())
        a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
        shift = 0.5 * (a - c) / (a - 2 * b + c)  # parabolic interpolation
        peaks.append(float(bins[k] + shift * (bins[1] - bins[0])))
        work[max(0, k - 8) : k + 9] = 0.0
    return sorted(peaks)


def component_level_dbfs(x: NDArray[np.int16], freq: float, rate: int) -> float:
    """Level (dBFS, 0 = full-scale sine) of the ``freq`` component of ``x``."""
    n = np.arange(len(x))
    amplitude = 2.0 * abs(np.dot(x.astype(np.float64), np.exp(-2j * np.pi * freq * n / rate)))
    amplitude /= len(x)
    return float(20.0 * np.log10(amplitude / 32767.0))


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("freq", [350.0, 440.0, 1004.0, 2600.0])
def test_tone_has_the_requested_frequency_length_and_level(rate: int, freq: float) -> None:
    x = tone(freq, 0.5, level_dbfs=-12.0, rate=rate, ramp_s=0.0)
    assert x.dtype == np.int16 and len(x) == rate // 2
    (peak,) = peak_frequencies(x, rate, 1)
    assert peak == pytest.approx(freq, abs=1.0)
    power_db = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / FULL_SCALE_SINE_POWER)
    assert power_db == pytest.approx(-12.0, abs=0.5)


@pytest.mark.parametrize("digit", list(DTMF_KEYS))
def test_every_dtmf_digit_has_its_two_keypad_frequencies(digit: str) -> None:
    low, high = dtmf_frequencies(digit)
    assert low in DTMF_LOW_HZ and high in DTMF_HIGH_HZ
    x = dtmf_tone(digit, 0.25, level_dbfs=-9.0)
    found = peak_frequencies(x, 8000, 2)
    assert found == pytest.approx([low, high], abs=2.0)


def test_keypad_layout_matches_the_standard_grid() -> None:
    assert dtmf_frequencies("1") == (697.0, 1209.0)
    assert dtmf_frequencies("0") == (941.0, 1336.0)
    assert dtmf_frequencies("#") == (941.0, 1477.0)
    assert dtmf_frequencies("D") == (941.0, 1633.0)
    assert dtmf_frequencies("a") == (697.0, 1633.0)


@pytest.mark.parametrize("bad", ["", "E", "12", "x", "-"])
def test_unknown_digit_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="digit"):
        dtmf_frequencies(bad)


@pytest.mark.parametrize(("level", "twist"), [(-6.0, 0.0), (-10.0, 4.0), (-20.0, -3.0)])
def test_dtmf_component_levels_follow_level_and_twist(level: float, twist: float) -> None:
    x = dtmf_tone("8", 0.2, level_dbfs=level, twist_db=twist, ramp_s=0.0)
    low, high = dtmf_frequencies("8")
    assert component_level_dbfs(x, low, 8000) == pytest.approx(level, abs=0.5)
    assert component_level_dbfs(x, high, 8000) == pytest.approx(level - twist, abs=0.5)


def test_amplitude_of_zero_dbfs_is_full_scale() -> None:
    assert amplitude_from_dbfs(0.0) == pytest.approx(32767.0)
    assert amplitude_from_dbfs(-6.0206) == pytest.approx(32767.0 / 2, rel=1e-4)


@pytest.mark.parametrize("rate", [8000, 16000])
def test_beep_is_1500_hz_for_500_ms(rate: int) -> None:
    x = beep(rate)
    assert len(x) == rate // 2
    (peak,) = peak_frequencies(x, rate, 1)
    assert BEEP_HZ == 1500.0
    assert peak == pytest.approx(1500.0, abs=1.0)
    loud = np.abs(x.astype(np.int32)) > 0.5 * np.abs(x).max()
    first, last = np.flatnonzero(loud)[[0, -1]]
    assert (last - first) / rate == pytest.approx(0.5, abs=0.005)


def test_render_digits_places_each_digit_at_its_start() -> None:
    placements = [("1", 0.5, 0.1), ("#", 0.25, 0.08), ("9", 1.0, 0.2)]
    x = render_digits(placements, total_seconds=1.5)
    assert len(x) == 12000
    for digit, start, duration in placements:
        a, b = round(start * 8000), round((start + duration) * 8000)
        piece = x[a:b]
        assert peak_frequencies(piece, 8000, 2) == pytest.approx(
            list(dtmf_frequencies(digit)), abs=15.0
        )
        assert not x[a - 40 : a].any() and not x[b : b + 40].any()  # silent around it
    sound = np.flatnonzero(x)
    assert sound.size and sound[0] >= 2000 and sound[-1] < 9600


def test_render_digits_refuses_overlaps_and_short_totals() -> None:
    with pytest.raises(ValueError, match="overlap"):
        render_digits([("1", 0.0, 0.1), ("2", 0.05, 0.1)])
    with pytest.raises(ValueError, match="total_seconds"):
        render_digits([("1", 0.0, 0.1)], total_seconds=0.05)


def test_tone_edges_are_ramped_not_cut() -> None:
    x = tone(1000.0, 0.1, level_dbfs=0.0).astype(np.int32)
    step = 32767 * 2 * np.pi * 1000 / 8000  # largest sample-to-sample step of the sine
    assert abs(x[0]) < 0.05 * 32767 and abs(x[-1]) < 0.05 * 32767
    assert np.abs(np.diff(x)).max() <= step * 1.01


segments = st.lists(
    st.one_of(
        st.builds(
            ToneSegment.tone,
            st.floats(100.0, 3500.0),
            st.floats(0.0, 0.2),
            st.floats(-40.0, -6.0),
        ),
        st.builds(ToneSegment.silence, st.floats(0.0, 0.1)),
        st.builds(
            ToneSegment.dtmf, st.sampled_from(DTMF_KEYS), st.floats(0.0, 0.2), st.floats(-20, -8)
        ),
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=60, deadline=None)
@given(
    plan=segments,
    rate=st.sampled_from([8000, 16000]),
    chunks=st.lists(st.integers(0, 700), min_size=1, max_size=40),
)
def test_streamed_reads_equal_the_one_shot_render(
    plan: list[ToneSegment], rate: int, chunks: list[int]
) -> None:
    whole = render(plan, rate)
    stream = ToneStream(plan, rate)
    assert stream.total == len(whole)
    pieces = [stream.read(n) for n in chunks]
    pieces.append(stream.read(max(0, len(whole) - stream.position) + 10))
    streamed = np.concatenate(pieces)
    assert stream.done and stream.remaining == 0
    np.testing.assert_array_equal(streamed[: len(whole)], whole)
    assert not streamed[len(whole) :].any()  # zeros past the end


def test_tick_driven_stream_has_no_clicks_at_frame_boundaries() -> None:
    # 1234.5 Hz does not fit a whole number of cycles in a 20 ms frame, so a
    # phase restart at a read boundary would show as a jump.
    plan = [ToneSegment.tone(1234.5, 0.5, -3.0), ToneSegment.silence(0.05)]
    stream = ToneStream(plan)
    x = np.concatenate([stream.read(160) for _ in range(30)]).astype(np.int32)
    largest_step = 2 * np.pi * 1234.5 / 8000 * amplitude_from_dbfs(-3.0)
    assert np.abs(np.diff(x)).max() <= largest_step * 1.01
    assert np.abs(x[:4000]).max() > 0.95 * amplitude_from_dbfs(-3.0)


def test_segment_lengths_do_not_drift() -> None:
    plan = [ToneSegment.tone(440.0, 1 / 3)] * 9  # 2666.67 samples each at 8 kHz
    assert len(render(plan)) == 24000


def test_bad_segments_are_refused() -> None:
    with pytest.raises(ValueError, match="seconds"):
        ToneSegment.tone(440.0, -1.0)
    with pytest.raises(ValueError, match="frequency"):
        ToneSegment.tone(0.0, 1.0)
    with pytest.raises(ValueError, match="rate"):
        ToneStream([], rate=0)
